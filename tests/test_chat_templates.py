"""Plain-string prompts go through the chat template when decoding (`generate`, `sample`, `evaluate`, every
decoding method), `chat_template=False` / `--no-chat-template` feeds them as is, a model without a template
gets a clear message and the `chatml` / `zephyr` / FILE fallback; training keeps string prompts raw."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from alignkit.cli.main import main
from alignkit.data.prompts import prompt_ids, render_prompt
from alignkit.decode import best_of_n, deal, draw_samples, genarm, nudging, steering, transfer_q, urial
from alignkit.models.rewards import TextReward
from conftest import tiny_llama

PROMPT = "Explain tides."
CHATML = "<|im_start|>user\nExplain tides.<|im_end|>\n<|im_start|>assistant\n"
ZEPHYR = "<|user|>\nExplain tides.</s>\n<|assistant|>\n"

pytestmark = pytest.mark.usefixtures("one_thread")


class Words(TextReward):
    def check(self, text: str) -> float:
        return float(len(text.split()))


def templated(tokenizer, text: str = PROMPT) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def model_for(tokenizer, seed: int = 0):
    return tiny_llama(vocab_size=len(tokenizer), seed=seed, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id)


@pytest.fixture()
def plain_tokenizer(smol_tokenizer_dir):
    """Another copy of the SmolLM2 tokenizer, without a chat template (a base model's)."""
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.chat_template = None
    return tokenizer


@pytest.fixture()
def plain_model_dir(tmp_path, plain_tokenizer):
    """A local model folder whose tokenizer was saved with `chat_template=None`."""
    folder = tmp_path / "tiny-base"
    model_for(plain_tokenizer).save_pretrained(folder)
    plain_tokenizer.save_pretrained(folder)
    assert not AutoTokenizer.from_pretrained(folder).chat_template
    return folder


@pytest.fixture()
def fed(monkeypatch):
    """The texts `draw_samples` encodes for the model (a spy on its `encode_left_padded`)."""
    import alignkit.models.sampling as sampling  # the sampler under draw_samples

    texts: list[str] = []
    original = sampling.encode_left_padded

    def spy(tokenizer, batch, device):
        texts.extend(batch)
        return original(tokenizer, batch, device)
    monkeypatch.setattr(sampling, "encode_left_padded", spy)
    return texts


def first_forward_text(model, tokenizer, run) -> str:
    """The decoded input ids of the model's first forward (the prompt prefill) while `run()` runs."""
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]
        if not seen:
            seen.append(ids[0].clone())
    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return tokenizer.decode(seen[0])


# --- render_prompt and prompt_ids ------------------------------------------------------------------------


def test_a_string_prompt_is_rendered_through_the_chat_template(smol_tokenizer):
    text = render_prompt(smol_tokenizer, PROMPT)
    assert text == templated(smol_tokenizer) and text != PROMPT and PROMPT in text
    assert render_prompt(smol_tokenizer, PROMPT, chat_template="auto") == text


def test_chat_template_false_leaves_strings_raw_and_message_lists_become_their_last_user_text(smol_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    assert render_prompt(smol_tokenizer, PROMPT, chat_template=False) == PROMPT
    assert render_prompt(smol_tokenizer, PROMPT, chat_template="none") == PROMPT
    assert render_prompt(smol_tokenizer, messages, chat_template=False) == PROMPT
    assert render_prompt(smol_tokenizer, messages) == smol_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)


def test_training_keeps_string_prompts_raw(smol_tokenizer):
    assert prompt_ids(smol_tokenizer, PROMPT) == smol_tokenizer(PROMPT)["input_ids"]


def test_a_tokenizer_without_a_template_gets_a_clear_message(plain_tokenizer):
    for prompt in (PROMPT, [{"role": "user", "content": PROMPT}]):
        with pytest.raises(ValueError) as error:
            render_prompt(plain_tokenizer, prompt)
        message = str(error.value)
        assert plain_tokenizer.name_or_path in message and "no chat template" in message
        assert "chatml" in message and "chat_template=False" in message and "--no-chat-template" in message
    assert render_prompt(plain_tokenizer, PROMPT, chat_template=False) == PROMPT


def test_builtin_and_file_templates(plain_tokenizer, smol_tokenizer, tmp_path):
    from alignkit.data.prompts import CHATML_TEMPLATE, ZEPHYR_TEMPLATE

    assert render_prompt(plain_tokenizer, PROMPT, chat_template="chatml") == CHATML
    assert render_prompt(plain_tokenizer, PROMPT, chat_template="zephyr") == ZEPHYR
    conversation = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                    {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}]
    assert render_prompt(plain_tokenizer, conversation, chat_template="chatml") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n"
        "<|im_start|>user\nV<|im_end|>\n<|im_start|>assistant\n")
    path = tmp_path / "template.jinja"
    path.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                    "{% if add_generation_prompt %}[assistant] {% endif %}", encoding="utf-8")
    assert render_prompt(plain_tokenizer, PROMPT, chat_template=str(path)) == "[user] Explain tides.\n[assistant] "
    assert plain_tokenizer.chat_template is None  # the Python API does not change the tokenizer
    assert CHATML_TEMPLATE != ZEPHYR_TEMPLATE
    with pytest.raises(ValueError, match="chatml, zephyr"):
        render_prompt(smol_tokenizer, PROMPT, chat_template=str(tmp_path / "missing.jinja"))


# --- decoding methods ------------------------------------------------------------------------------------


def test_draw_samples_feeds_the_templated_string(smol_tokenizer, fed):
    model = model_for(smol_tokenizer)
    draw_samples(model, smol_tokenizer, [PROMPT], n=1, temperature=0, max_new_tokens=2)
    draw_samples(model, smol_tokenizer, [PROMPT], n=1, temperature=0, max_new_tokens=2, chat_template=False)
    assert fed == [templated(smol_tokenizer), PROMPT]


def test_draw_samples_without_a_template_needs_a_fallback_or_chat_template_false(plain_tokenizer, fed):
    model = model_for(plain_tokenizer)
    with pytest.raises(ValueError, match="no chat template"):
        draw_samples(model, plain_tokenizer, [PROMPT], n=1, temperature=0, max_new_tokens=2)
    draw_samples(model, plain_tokenizer, [PROMPT], n=1, temperature=0, max_new_tokens=2, chat_template="chatml")
    draw_samples(model, plain_tokenizer, [PROMPT], n=1, temperature=0, max_new_tokens=2, chat_template=False)
    assert fed == [CHATML, PROMPT]


@pytest.mark.parametrize("method", ["best_of_n", "genarm", "deal", "transfer_q", "steering"])
def test_every_decoding_method_renders_a_string_prompt_through_the_template(smol_tokenizer, method):
    model, other = model_for(smol_tokenizer), model_for(smol_tokenizer, seed=1)
    settings = {"best_of_n": (best_of_n, {"reward": Words(), "n": 2}),
                "genarm": (genarm, {"arm": other}),
                "deal": (deal, {"reward": Words(), "k": 2, "lookahead": 1}),
                "transfer_q": (transfer_q, {"reward": Words(), "k": 2, "lookahead": 1}),
                "steering": (steering, {"directions": {0: torch.zeros(32)}})}
    function, extra = settings[method]

    def run(**options):
        return lambda: function(model, smol_tokenizer, [PROMPT], max_new_tokens=2, **extra, **options)
    assert first_forward_text(model, smol_tokenizer, run()) == templated(smol_tokenizer)
    assert first_forward_text(model, smol_tokenizer, run(chat_template=False)) == PROMPT
    assert first_forward_text(model, smol_tokenizer, run(chat_template="chatml")) == CHATML


def test_urial_and_the_nudging_base_keep_raw_text_on_a_model_without_a_template(plain_tokenizer, smol_tokenizer):
    model = model_for(plain_tokenizer)
    assert urial(model, plain_tokenizer, [PROMPT], max_new_tokens=2)[0].tokens >= 1
    guide = model_for(plain_tokenizer, seed=1)
    base_text = first_forward_text(model, plain_tokenizer, lambda: nudging(
        model, plain_tokenizer, [PROMPT], guide=guide, guide_tokenizer=smol_tokenizer, max_new_tokens=2))
    assert base_text == f"You are a helpful assistant.\nInstruction: {PROMPT}\n"
    guide_text = first_forward_text(guide, smol_tokenizer, lambda: nudging(
        model, plain_tokenizer, [PROMPT], guide=guide, guide_tokenizer=smol_tokenizer, gamma=1.0, max_new_tokens=2))
    assert guide_text == templated(smol_tokenizer)  # the aligned guide reads its chat template


# --- the command line ------------------------------------------------------------------------------------


def _prompts_file(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text(PROMPT + "\n", encoding="utf-8")
    return str(path)


def _generate(model_dir, tmp_path, *flags):
    out = tmp_path / "out.jsonl"
    out.unlink(missing_ok=True)
    return main(["generate", "--method", "best_of_n", "--model", str(model_dir), "--prompts", _prompts_file(tmp_path),
                 "--out", str(out), "--reward", "verifier:max_words=3", "--param", "n=2", "--max-new-tokens", "2",
                 *flags])


def test_generate_renders_a_txt_line_through_the_template(tiny_chat_model_dir, tmp_path, fed, smol_tokenizer):
    assert _generate(tiny_chat_model_dir, tmp_path) == 0
    assert _generate(tiny_chat_model_dir, tmp_path, "--no-chat-template") == 0
    assert _generate(tiny_chat_model_dir, tmp_path, "--chat-template", "zephyr") == 0
    assert fed == [templated(smol_tokenizer), PROMPT, ZEPHYR]
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[0]["prompt"] == PROMPT  # the row keeps the prompt as given


def test_generate_without_a_template_says_what_to_do(plain_model_dir, tmp_path, fed, capsys):
    assert _generate(plain_model_dir, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no chat template" in err and "--chat-template" in err and "Traceback" not in err
    assert _generate(plain_model_dir, tmp_path, "--chat-template", "chatml") == 0
    assert _generate(plain_model_dir, tmp_path, "--no-chat-template") == 0
    assert fed == [CHATML, PROMPT]
    assert _generate(plain_model_dir, tmp_path, "--chat-template", str(tmp_path / "nope.jinja")) == 2
    assert "nope.jinja" in capsys.readouterr().err


def test_generate_urial_ignores_the_missing_template(plain_model_dir, tmp_path):
    out = tmp_path / "u.jsonl"
    assert main(["generate", "--method", "urial", "--model", str(plain_model_dir), "--prompts",
                 _prompts_file(tmp_path), "--out", str(out), "--max-new-tokens", "2"]) == 0


def _rows(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def test_sample_honours_the_flags(plain_model_dir, tiny_chat_model_dir, tmp_path, fed, smol_tokenizer, capsys):
    data = _rows(tmp_path, "prompts.jsonl", [{"prompt": PROMPT}])

    def sample(model_dir, *flags):
        out = tmp_path / "samples.jsonl"
        out.unlink(missing_ok=True)
        return main(["sample", "--model", str(model_dir), "--data", data, "--k", "1", "--max-new-tokens", "2",
                     "--out", str(out), *flags])
    assert sample(tiny_chat_model_dir) == 0
    assert sample(tiny_chat_model_dir, "--no-chat-template") == 0
    assert sample(plain_model_dir) == 2 and "no chat template" in capsys.readouterr().err
    assert sample(plain_model_dir, "--chat-template", "chatml") == 0
    assert fed == [templated(smol_tokenizer), PROMPT, CHATML]


def test_evaluate_honours_the_flags(plain_model_dir, tmp_path, fed, capsys):
    data = _rows(tmp_path, "heldout.jsonl", [{"prompt": PROMPT, "check": {"type": "max_words", "n": 1000}}])

    def evaluate(*flags):
        return main(["evaluate", "--model", str(plain_model_dir), "--data", data, "--max-new-tokens", "2", *flags])
    assert evaluate() == 2 and "no chat template" in capsys.readouterr().err
    assert evaluate("--chat-template", "chatml") == 0
    assert evaluate("--no-chat-template") == 0
    assert fed == [CHATML, PROMPT]


@pytest.mark.parametrize("verb", ["generate", "sample", "evaluate"])
def test_help_explains_the_options(verb, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no-chat-template" in text and "--chat-template" in text and "chatml" in text and "zephyr" in text
    if verb == "sample":
        assert "D2O" in text and "raw" in text
