"""Export a training run (`alignkit train`'s output folder): merge a LoRA adapter into its base, write a model
card, push to the Hugging Face hub.

    run = read_run("runs/dpo-lora")
    folder = export_run(run, merge=True)          # runs/dpo-lora/merged: a plain causal LM + tokenizer + card
    push_to_hub(folder, "me/smollm2-dpo")

A run folder holds `config.yaml`, `metrics.jsonl`, `checkpoints/step-NNNNNN/` (each with `state.json`) and
`final/`: the causal LM, or for LoRA runs a PEFT adapter folder (`adapter_config.json`). Folders are written
to a temporary sibling and renamed into place, so a crash never leaves a half-written export.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

ADAPTER_CONFIG = "adapter_config.json"
CARD = "README.md"


class ExportError(ValueError):
    """A run cannot be exported as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Run:
    """A finished training run: its folder, its `config.yaml` (text and parsed) and its `final/` folder."""

    folder: Path
    config_yaml: str
    config: dict[str, Any]

    @property
    def final(self) -> Path:
        return self.folder / "final"

    @property
    def is_lora(self) -> bool:
        """Whether `final/` is a PEFT adapter (a LoRA run) rather than a full model."""
        return (self.final / ADAPTER_CONFIG).is_file()

    @property
    def base_name(self) -> str:
        """The base model as the user named it (`model.name_or_path`: hub id, built-in name or path)."""
        return str(self.config.get("model", {}).get("name_or_path", ""))


def read_run(folder: str | os.PathLike) -> Run:
    """The run in `folder`; a folder that is not a finished alignkit run is an ExportError saying what is missing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such folder; give the output_dir of an `alignkit train` run")
    missing = [name for name in ("config.yaml", "final") if not (folder / name).exists()]
    if missing:
        unfinished = " (it has checkpoints: the run did not finish; `alignkit train ... --resume` finishes it)" \
            if "final" in missing and (folder / "checkpoints").is_dir() else ""
        raise ExportError(f"{folder}: not an alignkit run folder: no {' and no '.join(missing)}{unfinished}; "
                          "give the output_dir of an `alignkit train` run")
    text = (folder / "config.yaml").read_text(encoding="utf-8")
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ExportError(f"{folder / 'config.yaml'}: not valid YAML ({err})") from None
    if not isinstance(config, dict):
        raise ExportError(f"{folder / 'config.yaml'}: not an alignkit training configuration")
    return Run(folder=folder, config_yaml=text, config=config)


def last_checkpoint_state(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The run's final state (`final/training_state.json`), else the `state.json` of its newest finished
    checkpoint (one with its manifest), or None."""
    final = Path(folder) / "final" / "training_state.json"
    if final.is_file():
        return {"checkpoint": "final", **json.loads(final.read_text())}
    steps = sorted(p for p in (Path(folder) / "checkpoints").glob("step-*")
                   if (p / "manifest.json").is_file() and (p / "state.json").is_file())
    if not steps:
        return None
    return {"checkpoint": steps[-1].name, **json.loads((steps[-1] / "state.json").read_text())}


def final_metrics(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The last logged step of the run (the last line of `metrics.jsonl`), or None."""
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        return None
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def write_text_atomically(path: Path, text: str) -> None:
    """Write `path` through a temporary file in the same folder, renamed over it."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_adapter_base(folder: str | os.PathLike, name: str) -> None:
    """Make the PEFT adapter in `folder` name `name` as its base (`base_model_name_or_path` in
    adapter_config.json): the model as the user named it, not the private folder it was loaded from."""
    path = Path(folder) / ADAPTER_CONFIG
    settings = json.loads(path.read_text(encoding="utf-8"))
    if settings.get("base_model_name_or_path") != name:
        settings["base_model_name_or_path"] = name
        write_text_atomically(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


@contextmanager
def staged_folder(folder: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary sibling of `folder` to write into; renamed to `folder` when the block succeeds (replacing
    an existing one only with `overwrite`), removed when it fails."""
    if folder.exists() and not overwrite:
        raise ExportError(f"{folder} already exists; pass --overwrite to replace it")
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder} exists and is not a folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
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


def check_destination(run: Run, out: Path) -> None:
    """Refuse an export folder that would replace the run or part of it (the run itself, `final/`, a folder
    above the run, anything inside `final/` or `checkpoints/`)."""
    target, root = out.resolve(), run.folder.resolve()
    inside = any(target.is_relative_to(root / name) for name in ("final", "checkpoints"))
    if target == root or root.is_relative_to(target) or inside or target == root / "config.yaml":
        raise ExportError(f"--out {out}: would overwrite the run {run.folder} itself; choose another folder")


def require_adapter(run: Run) -> None:
    """An ExportError unless `run` trained a LoRA adapter (what --merge-lora merges)."""
    if not run.is_lora:
        raise ExportError(f"{run.folder}: the run has no LoRA adapter to merge (final/ is a full fine-tuned "
                          "model, loadable as it is); export it without --merge-lora")


def merge_lora(run: Run, folder: Path) -> None:
    """Write the run's base model with its LoRA adapter merged in (`merge_and_unload`) and the run's tokenizer
    into `folder`: a plain causal LM for `AutoModelForCausalLM.from_pretrained`."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from alignkit.models.loading import load

    require_adapter(run)
    base = load(run.base_name).model
    merged = PeftModel.from_pretrained(base, run.final).merge_and_unload()
    merged.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(run.final).save_pretrained(folder)


def export_run(run: Run, *, merge: bool = False, out: str | os.PathLike | None = None, overwrite: bool = False,
               objective_params: Mapping[str, Any] | None = None, title: str | None = None) -> Path:
    """Export `run` and return the exported folder, with its model card (`model_card`) as README.md.

    `merge`: the merged full model in `out` (default `RUN/merged`). Otherwise a copy of `final/` in `out`, or
    `final/` itself when `out` is None. An adapter's `base_model_name_or_path` names the base as the user did.
    """
    card = model_card(run, objective_params=objective_params, merged=merge, title=title)
    if out is None and not merge:
        if run.is_lora:
            set_adapter_base(run.final, run.base_name)
        write_text_atomically(run.final / CARD, card)
        return run.final
    folder = Path(out) if out is not None else run.folder / "merged"
    check_destination(run, folder)
    if merge:
        require_adapter(run)  # before anything is written
    with staged_folder(folder, overwrite) as tmp:
        if merge:
            merge_lora(run, tmp)
        else:
            shutil.copytree(run.final, tmp, dirs_exist_ok=True)
            if run.is_lora:
                set_adapter_base(tmp, run.base_name)
        (tmp / CARD).write_text(card, encoding="utf-8")
    return folder


# ------------------------------------------------------------------ the model card and the hub


def alignkit_version() -> str:
    """The installed alignkit version ("unknown" in a source tree that was not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("alignkit")
    except PackageNotFoundError:
        return "unknown"


def is_hub_id(name: str) -> bool:
    """Whether `name` looks like a hub id (`org/name`) rather than a local path or a built-in name."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not Path(name).expanduser().exists()


def _card_header(run: Run, objective: str, merged: bool) -> str:
    """The card's YAML metadata block (the hub reads `base_model` only when it is a hub id)."""
    metadata: dict[str, Any] = {"library_name": "peft" if run.is_lora and not merged else "transformers",
                                "tags": ["alignkit", objective]}
    if is_hub_id(run.base_name):
        metadata["base_model"] = run.base_name
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False) + "---\n"


def _weights_line(run: Run, merged: bool) -> str:
    if merged:
        return "a full model: the LoRA adapter merged into the base (`AutoModelForCausalLM.from_pretrained`)"
    if run.is_lora:
        return (f"a LoRA adapter: `peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), "
                f"folder)`, base `{run.base_name}`")
    return "a full fine-tuned model (`AutoModelForCausalLM.from_pretrained`)"


def _metrics_table(metrics: Mapping[str, Any] | None) -> list[str]:
    if not metrics:
        return ["No metrics were logged (no metrics.jsonl)."]
    rows = ["| metric | value |", "| --- | --- |"]
    rows += [f"| {key} | {value:.6g} |" if isinstance(value, float) else f"| {key} | {value} |"
             for key, value in metrics.items()]
    return rows


def model_card(run: Run, *, objective_params: Mapping[str, Any] | None = None, merged: bool = False,
               title: str | None = None) -> str:
    """README.md for the exported model: base model, objective and parameters, data source and fingerprint
    (from the newest checkpoint's state.json), final metrics (last line of metrics.jsonl), the full
    config.yaml, and the alignkit version. `objective_params` defaults to the config's objective.params."""
    objective = run.config.get("objective", {}) or {}
    name = str(objective.get("name", "dpo"))
    params = dict(objective_params if objective_params is not None else objective.get("params") or {})
    state = last_checkpoint_state(run.folder) or {}
    metrics = final_metrics(run.folder)
    fingerprint = state.get("data_fingerprint") or "unknown (no finished checkpoint)"
    shown = ", ".join(f"{key}={value!r}" for key, value in sorted(params.items())) or "none"
    lines = [f"# {title or run.folder.name}", "",
             f"Trained with [alignkit](https://pypi.org/project/alignkit/) {alignkit_version()}.", "",
             "## Training", "",
             f"- Base model: `{run.base_name}`",
             f"- Weights: {_weights_line(run, merged)}",
             f"- Objective: `{name}`; parameters: {shown}",
             f"- Data: `{(run.config.get('data') or {}).get('train', 'unknown')}`",
             f"- Data fingerprint: `{fingerprint}`" + (f" (from {state['checkpoint']})" if state else ""),
             f"- Steps: {state.get('step', 'unknown')}; tokens seen: {state.get('tokens_seen', 'unknown')}", "",
             "## Final metrics" + (f" (step {metrics['step']})" if metrics and "step" in metrics else ""),
             "", *_metrics_table(metrics), "",
             "## Configuration (config.yaml)", "", "```yaml", run.config_yaml.rstrip("\n"), "```", ""]
    return _card_header(run, name, merged) + "\n" + "\n".join(lines)


def push_to_hub(folder: str | os.PathLike, repo: str, *, private: bool = False,
                commit_message: str = "alignkit export") -> str:
    """Create the model repo `repo` (if needed) and upload `folder` to it; returns the repo's URL. A hub that
    cannot be reached, a missing login or a refusal is an ExportError saying so."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError

    api = HfApi()
    try:
        url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model", commit_message=commit_message)
    except (HTTPError, OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"--push-to-hub {repo}: the Hugging Face hub could not take the upload: {reason}. "
                          f"Check the network (and that HF_HUB_OFFLINE is not set) and the login "
                          f"(`hf auth login` or HF_TOKEN); the export itself is in {folder}") from err
    return str(url)
