"""What may change when a run is resumed, and what `config.yaml` records of it.

Every key of the configuration is in one of three classes:

* **compatible** — how long to train, how often to log and save, performance knobs that give the same numbers
  (up to rounding): the new value is used;
* **optimizer** — the optimizer's and the schedule's hyper-parameters: applied to the restored optimizer and
  scheduler (which would otherwise keep the checkpoint's values), and logged;
* **incompatible** — the model, the data, the objective, the reference, the batch layout, the seed and the
  precision: a different value is refused, naming every such key, since the resumed run would not be the run
  its checkpoints come from. `data.train` may name another path if the tokenized data is the same (its
  fingerprint is checked), and the number of processes may not change (it changes the global batch).

`config.yaml` always holds the configuration in use, headed by a comment line for the start and for each
resume (when, from which step, what changed); it stays a recipe `alignkit train --config` reads.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from alignkit.train.checkpoint import checkpoint_config, checkpoint_state, latest_checkpoint
from alignkit.train.config import ConfigError, TrainConfig, to_yaml

log = logging.getLogger(__name__)

COMPATIBLE = ("max_steps", "epochs", "save_every", "keep_checkpoints", "save_optimizer", "save_final_only",
              "log_every", "report_to", "progress", "eval_every", "data.eval", "on_nonfinite", "overwrite", "output_dir",
              "activation_checkpointing", "lm_head_chunk", "prefix_sharing", "packing", "pack_row_tokens",
              "optim.max_grad_norm", "optim.fused", "data.train")
OPTIMIZER = ("optim.lr", "optim.weight_decay", "optim.betas", "optim.eps", "optim.warmup_steps", "optim.schedule")
HEADER = "# alignkit run: the configuration in use (a recipe for `alignkit train --config`); one line per start or resume"


def flat(config: TrainConfig | dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys to values, e.g. {"optim.lr": 5e-6, "objective.params.beta": 0.1}."""
    tree = OmegaConf.to_container(OmegaConf.structured(config)) if isinstance(config, TrainConfig) else config
    values = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            values.update(flat(value, f"{prefix}{key}."))
        else:
            values[f"{prefix}{key}"] = value
    return values


def key_class(key: str) -> str:
    if key in COMPATIBLE:
        return "compatible"
    if key in OPTIMIZER:
        return "optimizer"
    return "incompatible"


def changes(saved_yaml: str, config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """{key: (value in the checkpoint's run, value now)} for every key that differs."""
    before, now = flat(yaml.safe_load(saved_yaml) or {}), flat(config)
    return {key: (before.get(key), now.get(key)) for key in sorted(set(before) | set(now))
            if before.get(key) != now.get(key)}


def find_checkpoint(config: TrainConfig, world_size: int) -> tuple[Path | None, dict[str, tuple[Any, Any]]]:
    """The checkpoint `--resume` continues from (the newest intact one) and what the configuration changes
    against the run that wrote it; an incompatible change is refused here, before anything is loaded."""
    checkpoint = latest_checkpoint(Path(config.output_dir))
    if checkpoint is None:
        log.warning("--resume: no intact checkpoint in %s; starting from step 0", config.output_dir)
        return None, {}
    diff = changes(checkpoint_config(checkpoint), config)
    refuse_incompatible(diff, checkpoint_state(checkpoint).world_size, world_size)
    return checkpoint, diff


def check_same_data(checkpoint: Path | None, fingerprint: str) -> None:
    """The tokenized training data must be the data the checkpoint was trained on."""
    if checkpoint is not None and checkpoint_state(checkpoint).data_fingerprint != fingerprint:
        raise ConfigError(f"--resume would not continue the same run: the training data (data.train, tokenized) "
                          f"differs from the data {checkpoint} was trained on; start a new run in another "
                          "output_dir instead")


def refuse_incompatible(diff: dict[str, tuple[Any, Any]], saved_world_size: int, world_size: int) -> None:
    """Refuse a resume that would not continue the same run (see the module docstring)."""
    refused = [f"{key}: {old!r} -> {new!r}" for key, (old, new) in diff.items() if key_class(key) == "incompatible"]
    if saved_world_size != world_size:
        refused.append(f"processes: {saved_world_size} -> {world_size} (the global batch would change)")
    if refused:
        raise ConfigError("--resume would not continue the same run; these cannot change on resume:\n  "
                          + "\n  ".join(refused) + "\nstart a new run in another output_dir instead")


def apply_optimizer_settings(config: TrainConfig, optimizer, scheduler, diff: dict[str, tuple[Any, Any]]) -> None:
    """Put the configured optimizer hyper-parameters into the restored optimizer and scheduler (a checkpoint
    restores its own), so a changed `optim.lr` etc. takes effect from the resumed step."""
    if not any(key_class(key) == "optimizer" for key in diff):
        return
    if not hasattr(scheduler, "lr_lambdas"):
        raise ConfigError(f"--resume: optim.* changed, but the {config.optim.schedule} schedule cannot take a new "
                          "learning rate mid-run; resume with the checkpoint's optimizer settings")
    optim = config.optim
    for group in optimizer.param_groups:
        group.update(initial_lr=optim.lr, weight_decay=optim.weight_decay, betas=tuple(optim.betas), eps=optim.eps)
    scheduler.base_lrs = [optim.lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = optim.lr * factor(scheduler.last_epoch)


def history(previous_yaml: str | None) -> list[str]:
    """The start and resume lines of an existing `config.yaml`."""
    if previous_yaml is None:
        return []
    return [line for line in previous_yaml.splitlines() if line.startswith("# 2")]


def config_text(config: TrainConfig, past: list[str], event: str) -> str:
    """`config.yaml`: the header, the past start/resume lines, this one (UTC time + `event`), the config."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return "\n".join([HEADER, *past, f"# {stamp} {event}"]) + "\n" + to_yaml(config)


def describe(diff: dict[str, tuple[Any, Any]]) -> str:
    applied = [f"{key} {old!r} -> {new!r}" + (" (applied to the restored optimizer)"
                                             if key_class(key) == "optimizer" else "")
               for key, (old, new) in diff.items()]
    return "changed: " + "; ".join(applied) if applied else "no changes"
