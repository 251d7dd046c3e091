"""Prompts and completions as text and as the model sees them: the one place that renders them.

A prompt or completion (`Content`) is a plain string or a TRL-style message list
(`[{"role": ..., "content": ...}, ...]`). This module turns either into

* the text a model is fed (`render_prompt`: a message list through the tokenizer's chat template with the
  generation prompt; a string as is) and its token ids as training tokenizes them (`prompt_ids`);
* the plain text of a prompt or completion (`prompt_text`, `text_of`) for verifiers, judges and rewards;
* a transcript (`transcript`) for judges that read a conversation as text;
* a hashable key (`content_key`) for caches and per-prompt tables.

Training, decoding, rewards and embeddings all import from here, so a prompt is rendered the same way
everywhere.
"""

from __future__ import annotations

import json
from typing import Any, Union

Content = Union[str, list]
Prompt = Content  # a prompt: a string, or a message list ending where the assistant should answer


def content_text(content: Any) -> str:
    """A message's content as text: a string as is; a multimodal content list keeps its text parts."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def text_of(completion: Content) -> str:
    """The text of a completion: the string itself, or the joined contents of its assistant messages."""
    if isinstance(completion, str):
        return completion
    return "\n".join(content_text(m.get("content", "")) for m in completion if m.get("role", "assistant") == "assistant")


def prompt_text(prompt: Prompt) -> str:
    """The text of a prompt: the string itself, or the content of its last user message (all text if none)."""
    if isinstance(prompt, str):
        return prompt
    users = [content_text(m.get("content", "")) for m in prompt if m.get("role") == "user"]
    return users[-1] if users else "\n".join(content_text(m.get("content", "")) for m in prompt)


def transcript(prompt: Prompt) -> str:
    """A prompt as a transcript: a string as is, a message list as "Role: content" lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', 'user').capitalize()}: {content_text(m.get('content', ''))}" for m in prompt)


def render_prompt(tokenizer: Any, prompt: Prompt, chat_template: bool = True) -> str:
    """The text fed to the model. A message list goes through the tokenizer's chat template with the
    generation prompt; with `chat_template=False` (a base model) it becomes `prompt_text(prompt)`. A string
    is always used as is."""
    if isinstance(prompt, str):
        return prompt
    if not chat_template:
        return prompt_text(prompt)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("message-list prompts need a tokenizer with a chat template")
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """The token ids of a prompt as the trainer tokenizes it: a rendered message list without extra special
    tokens (the chat template supplies them), a string with the tokenizer's special tokens (e.g. a BOS)."""
    text = render_prompt(tokenizer, prompt)
    return list(tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"])


def as_completion(prompt: Prompt, text: str) -> Content:
    """Generated `text` in the prompt's format: a string for a string prompt, one assistant message otherwise."""
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def content_key(value: Content) -> str:
    """A hashable key for a prompt or completion: strings as they are, message lists as canonical JSON (the
    prefix keeps the string "[]" and the empty message list apart)."""
    if isinstance(value, str):
        return "s:" + value
    return "j:" + json.dumps(value, sort_keys=True, ensure_ascii=False)
