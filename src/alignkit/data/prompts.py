"""Prompts and completions as text and as the model sees them: the one place that renders them.

A prompt or completion (`Content`) is a plain string or a TRL-style message list
(`[{"role": ..., "content": ...}, ...]`). This module turns either into

* the text a model is fed when decoding (`render_prompt`, `render_prompts`: a string as one user message, or a
  message list, through the tokenizer's chat template with the generation prompt; a built-in ChatML/Zephyr
  template or a Jinja file for a tokenizer without one; the text as is with `chat_template=False`) and a
  prompt's token ids as training tokenizes them (`prompt_ids`: a string stays raw text, TRL's convention);
* the plain text of a prompt or completion (`prompt_text`, `text_of`) for verifiers, judges and rewards;
* a transcript (`transcript`) for judges that read a conversation as text;
* a hashable key (`content_key`) for caches and per-prompt tables.

Training, decoding, rewards and embeddings all import from here, so a prompt is rendered the same way
everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
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


# Built-in fallback templates for a model whose tokenizer has none (`chat_template="chatml"` / `"zephyr"`).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' "
    "+ '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '</s>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
BUILTIN_TEMPLATES = {"chatml": CHATML_TEMPLATE, "zephyr": ZEPHYR_TEMPLATE}
# How a prompt is rendered for decoding: True or "auto" (the tokenizer's chat template), False or "none" (the
# text as is), "chatml" / "zephyr" (a built-in template), a path to a Jinja file, or Jinja source itself.
ChatTemplate = Union[bool, str]


def template_source(choice: str) -> str:
    """The Jinja source a template choice names: a built-in ("chatml", "zephyr"), a string holding Jinja tags
    (taken as the template itself), or the path of a Jinja file (a ValueError when there is no such file)."""
    if choice in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[choice]
    if "{%" in choice or "{{" in choice:
        return choice
    path = Path(choice).expanduser()
    if not path.is_file():
        raise ValueError(f"chat template {choice!r}: not one of {', '.join(BUILTIN_TEMPLATES)}, auto, none, "
                         "nor a Jinja template file")
    return path.read_text(encoding="utf-8")


def resolve_chat_template(choice: ChatTemplate) -> bool | str:
    """A choice as True (the tokenizer's own template), False (no template) or the Jinja source to use."""
    if choice is True or choice == "auto":
        return True
    if choice is False or choice == "none":
        return False
    if isinstance(choice, str):
        return template_source(choice)
    raise ValueError(f"chat_template must be True, False, 'auto', 'none', 'chatml', 'zephyr' or a Jinja file, "
                     f"got {choice!r}")


def missing_template_message(tokenizer: Any) -> str:
    """What to say when a prompt needs a chat template and the tokenizer has none."""
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return (f"the tokenizer of {name} has no chat template, so a prompt cannot be rendered as a chat: set one with "
            f"chat_template='chatml' or 'zephyr' or a Jinja file path (CLI: --chat-template chatml|zephyr|FILE), "
            f"or feed the prompt text as is with chat_template=False (CLI: --no-chat-template) for a base model")


def render_prompts(tokenizer: Any, prompts: Sequence[Prompt], chat_template: ChatTemplate = True) -> list[str]:
    """The text fed to the model for each prompt (`render_prompt`), the template choice resolved once."""
    resolved = resolve_chat_template(chat_template)
    return [_render(tokenizer, prompt, resolved) for prompt in prompts]


def render_prompt(tokenizer: Any, prompt: Prompt, chat_template: ChatTemplate = True) -> str:
    """The text fed to the model when decoding. A string is one user message; a message list is itself. Both go
    through the tokenizer's chat template with the generation prompt (`chat_template=True` or "auto"; a
    ValueError saying what to do when the tokenizer has none), or through another template (`"chatml"`,
    `"zephyr"`, a Jinja file path or Jinja source: used instead of the tokenizer's, which is left unchanged).
    With `chat_template=False` or "none" (a base model) a string is used as is and a message list becomes
    `prompt_text(prompt)`. Training renders string prompts raw instead (`prompt_ids`)."""
    return _render(tokenizer, prompt, resolve_chat_template(chat_template))


def _render(tokenizer: Any, prompt: Prompt, template: bool | str) -> str:
    if template is False:
        return prompt if isinstance(prompt, str) else prompt_text(prompt)
    if template is True and not getattr(tokenizer, "chat_template", None):
        raise ValueError(missing_template_message(tokenizer))
    return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True,
                                         chat_template=None if template is True else template)


def prompt_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """The token ids of a prompt as the trainer tokenizes it (TRL's convention): a message list rendered with
    the chat template, without extra special tokens (the template supplies them); a string as raw text, with
    the tokenizer's special tokens (e.g. a BOS) and no chat template."""
    text = prompt if isinstance(prompt, str) else render_prompt(tokenizer, prompt)
    return list(tokenizer(text, add_special_tokens=isinstance(prompt, str))["input_ids"])


def as_messages(prompt: Prompt) -> list[dict]:
    """A prompt as a message list: a string becomes one user message (as decoding renders it), so that rows
    built from samples train on the text the samples were drawn from (training renders strings raw)."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def with_context(prompt: Prompt, context: str) -> Prompt:
    """The prompt with a context passage before it: "{context}\n\n{prompt}" for a string prompt; for a message
    list, the same text in place of its last user message's content (the question the context informs)."""
    if isinstance(prompt, str):
        return f"{context}\n\n{prompt}"
    messages = [dict(message) for message in prompt]
    last_user = max((i for i, message in enumerate(messages) if message.get("role") == "user"), default=None)
    if last_user is None:
        raise ValueError("a conversational prompt needs a user message to put the context in")
    messages[last_user]["content"] = f"{context}\n\n{messages[last_user]['content']}"
    return messages


def as_completion(prompt: Prompt, text: str) -> Content:
    """Generated `text` in the prompt's format: a string for a string prompt, one assistant message otherwise."""
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def content_key(value: Content) -> str:
    """A hashable key for a prompt or completion: strings as they are, message lists as canonical JSON (the
    prefix keeps the string "[]" and the empty message list apart)."""
    if isinstance(value, str):
        return "s:" + value
    return "j:" + json.dumps(value, sort_keys=True, ensure_ascii=False)
