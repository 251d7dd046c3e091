"""What an evaluation reads before any model runs: its prompts, its rewards (from text specs), and the
policies of a training run (its checkpoints and final model)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from alignkit.data import Record, collect
from alignkit.data.prompts import Prompt
from alignkit.data.records import load_prompt_records
from alignkit.data.rows import RowProblem
from alignkit.data.rows import read_prompts as read_rows_prompts  # same name as the function below
from alignkit.models.rewards import Reward
from alignkit.models.rewards.spec import reward_from_spec
from alignkit.models.rewards.verifiers import InstructionChecks
from alignkit.models.verifiers import CHECK_TYPES

CHECKS = "checks"  # the reward spec naming each prompt row's own `check`


def read_prompts(source: str, field: str = "prompt") -> tuple[list[Prompt], list[Record]]:
    """The prompts (and their records) of a dataset, a .txt file or stdin; every bad row reported at once,
    and an empty source is an error naming it."""
    records = load_prompt_records(source, field)
    prompts = read_rows_prompts(records, field)
    if not prompts:
        raise ValueError(f"--prompts {source}: no prompts found")
    return prompts, records


def _checks_reward(records: Sequence[Record], field: str) -> Reward:
    """`InstructionChecks` over the prompt rows' own checks; a row without a valid check is an error."""
    def read(record) -> dict:
        spec = record.data.get("check")
        if not isinstance(spec, dict) or spec.get("type") not in CHECK_TYPES:
            raise RowProblem("check", f"the reward '{CHECKS}' needs every row to carry a check (an object whose "
                                      f"type is one of {', '.join(CHECK_TYPES)}), got {spec!r}")
        return record.data
    checked = collect(records, read)
    return InstructionChecks([{"prompt": row[field], "check": row["check"]} for row in checked])


def build_rewards(specs: Sequence[str], records: Sequence[Record], field: str = "prompt", *,
                  batch_size: int = 8, device: str | None = None) -> tuple[dict[str, Reward], tuple[str, ...]]:
    """`{spec: reward}` and the specs that are 0/1 checks (verifiers and `checks`). With no spec, `checks`
    when every prompt row carries a check, else a ValueError asking for --reward."""
    if not specs:
        if not all(isinstance(record.data.get("check"), dict) for record in records):
            raise ValueError("give at least one --reward SPEC (verifier:..., classifier:PATH, judge:MODEL, "
                             f"...), or '{CHECKS}' for prompt rows that carry a check")
        specs = [CHECKS]
    if len(set(specs)) != len(specs):
        raise ValueError(f"--reward given twice: {sorted(s for s in specs if list(specs).count(s) > 1)[0]}")
    rewards: dict[str, Reward] = {}
    for spec in specs:
        if spec == CHECKS:
            rewards[spec] = _checks_reward(records, field)
            continue
        try:
            rewards[spec] = reward_from_spec(spec, batch_size=batch_size, device=device)
        except ValueError as err:
            raise ValueError(f"--reward {spec}: {err}") from None
    pass_rates = tuple(spec for spec in rewards if spec == CHECKS or spec.strip().lower().startswith("verifier:"))
    return rewards, pass_rates


def expand_policies(specs: Sequence[str | os.PathLike]) -> list[str]:
    """Each policy as given, except a training run's folder (it holds `checkpoints/` or `final/`), which
    stands for its complete checkpoints (those with a manifest, in step order) and then its final model; the
    checkpoint of the final model's own step (`final/training_state.json`) holds the same weights and is left
    out."""
    policies: list[str] = []
    for spec in specs:
        folder = Path(spec)
        checkpoints = folder / "checkpoints"
        final = folder / "final"
        if not (folder.is_dir() and (checkpoints.is_dir() or (final / "config.json").is_file())):
            policies.append(os.fspath(spec))
            continue
        steps = sorted(p for p in checkpoints.glob("step-*") if (p / "manifest.json").is_file()) \
            if checkpoints.is_dir() else []
        has_final = (final / "config.json").is_file()
        last = _final_step(final) if has_final else None
        found = [os.fspath(p) for p in steps if _step_of(p) != last] + ([os.fspath(final)] if has_final else [])
        if not found:
            raise ValueError(f"--policy {spec}: a training run folder without a complete checkpoint or final model")
        policies.extend(found)
    return policies


def _step_of(checkpoint: Path) -> int | None:
    """N of a `step-N` checkpoint folder (None for another name)."""
    digits = checkpoint.name.removeprefix("step-")
    return int(digits) if digits.isdigit() else None


def _final_step(final: Path) -> int | None:
    """The step `final/` was saved at, from its `training_state.json` (None when absent or unreadable)."""
    try:
        step = json.loads((final / "training_state.json").read_text(encoding="utf-8")).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) else None
