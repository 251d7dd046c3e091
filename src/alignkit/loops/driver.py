"""The self-alignment loop: rounds of sample → label → train → evaluate, composed of the sampler, rewards, the
one trainer and the evaluations; `alignkit loop` runs it. A preset (`alignkit.loops.presets`) only labels.

    OUTPUT_DIR/loop.yaml              the configuration (a later start must match it, except `rounds`)
    OUTPUT_DIR/round-N/data.jsonl     round N's training rows, a dataset `alignkit train` reads as it is
    OUTPUT_DIR/round-N/provenance.json  round, the model that labelled, sampling settings, labeller, row count
    OUTPUT_DIR/round-N/train/         the round's training run (`final/` is round N+1's model)
    OUTPUT_DIR/round-N/eval.json      the round's evaluation; OUTPUT_DIR/eval-base.json the starting model's
    OUTPUT_DIR/summary.md             the table of every evaluated round

Resumable: each round's data is written atomically, then its provenance; training resumes from its newest
checkpoint; a stage whose output exists is not run again. Sampling is seeded by (seed, round), so a killed loop
started again ends with the same data and parameters as one that never stopped (tests/test_loops.py). A
preset with a labelled seed (SPA) has a round 0 that trains on the seed rows before any sampling.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from alignkit.data import load_records
from alignkit.data.writing import write_json, write_jsonl, write_text
from alignkit.loops.config import LoopConfig
from alignkit.loops.evaluate import evaluate_round, summary_table
from alignkit.loops.presets import PRESETS
from alignkit.loops.rounds import Preset, RoundContext
from alignkit.models.loading import ensure_loaded
from alignkit.train.config import ConfigError, load_config
from alignkit.train.loop import train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopResult:
    output_dir: Path
    final_model: Path
    evaluations: dict[str, dict]  # "base", "round-N" → that model's evaluation (empty with eval.kind none)
    summary: str


def _train_overrides(config: LoopConfig, model: str, data: Path, out: Path) -> list[str]:
    return [f"model.name_or_path={model}", f"data.train={data}", f"output_dir={out}", f"seed={config.seed}",
            "report_to=none", *config.train.overrides]


def check_train_config(config: LoopConfig, preset: Preset) -> None:
    """The round's train configuration loads (recipe, overrides), before any round runs."""
    out = Path(config.output_dir)
    load_config(config.train.recipe or preset.recipe, _train_overrides(config, config.model, out / "x.jsonl", out))


def _claim(config: LoopConfig) -> Path:
    """The output folder, with loop.yaml; a folder holding another loop's configuration is refused."""
    out = Path(config.output_dir)
    saved = out / "loop.yaml"
    text = config.to_yaml()
    if saved.exists():
        def without_rounds(yaml: str) -> list[str]:
            return [line for line in yaml.splitlines() if not line.startswith("rounds:")]
        if without_rounds(saved.read_text()) != without_rounds(text):
            raise ConfigError(f"output_dir: {out} holds another loop ({saved} differs from this configuration "
                              "other than in `rounds`); choose another output_dir")
    elif out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"output_dir: {out} is not empty and holds no loop.yaml; choose a new or empty folder")
    write_text(text, saved)
    return out


def _label(config: LoopConfig, preset: Preset, params: dict, round_: int, model: str, reference: str | None,
           records: list, folder: Path) -> None:
    """Round `round_`'s rows, then its provenance (so a half-written round is never taken as done)."""
    started = time.perf_counter()
    if round_ == 0:
        rows = preset.seed_rows(params)
    else:
        context = RoundContext(round_, ensure_loaded(model), reference, records, params, config.sample,
                               config.seed * 1000 + round_, folder)
        rows = preset.label(context)
        del context
        gc.collect()
    if not rows:
        raise RuntimeError(f"round {round_}: the {preset.name} labeller kept no rows from {len(records)} prompts "
                           f"(model {model}); loosen the preset's filter (params) or sample more (sample.k)")
    write_jsonl(rows, folder / "data.jsonl", overwrite=True)
    write_json({"round": round_, "preset": preset.name, "labeller": f"{preset.label.__module__}.{preset.label.__name__}"
                if round_ else "seed rows", "model": model, "reference": reference, "sampling": vars(config.sample),
                "seed": config.seed * 1000 + round_, "params": params, "rows": len(rows), "source_rows": len(records),
                "seconds": round(time.perf_counter() - started, 1)}, folder / "provenance.json")


def run_loop(config: LoopConfig) -> LoopResult:
    """Run (or resume) every round of `config`; see the module docstring."""
    preset = PRESETS[config.preset]
    params = {**preset.defaults, **config.params}
    check_train_config(config, preset)
    records = load_records(config.data)[:config.limit]
    if not records:
        raise ConfigError(f"data: {config.data} has no rows")
    out = _claim(config)
    evaluations = {"base": evaluate_round(config, config.model, out / "eval-base.json")}
    model, reference = config.model, None
    for round_ in range(0 if preset.seed_rows else 1, config.rounds + 1):
        folder = out / f"round-{round_}"
        if not (folder / "provenance.json").exists():
            log.info("round %d: labelling with %s", round_, preset.name)
            _label(config, preset, params, round_, model, reference, records, folder)
        final = folder / "train" / "final"
        if not (final / "training_state.json").exists():
            log.info("round %d: training on %s", round_, folder / "data.jsonl")
            recipe = config.train.recipe or preset.recipe
            train_config = load_config(recipe, _train_overrides(config, model, folder / "data.jsonl", folder / "train"))
            train(train_config, resume=(folder / "train").is_dir())
        evaluations[f"round-{round_}"] = evaluate_round(config, str(final), folder / "eval.json")
        model, reference = str(final), model
    summary = summary_table(evaluations)
    write_text(summary, out / "summary.md")
    return LoopResult(out, Path(model), evaluations, summary)
