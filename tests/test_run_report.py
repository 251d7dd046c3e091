"""`alignkit report`: training curves and the Markdown summary of run folders (hand-written and one real tiny run)."""

from __future__ import annotations

import calendar
import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import write_pairs

from alignkit.cli.main import main
from alignkit.eval import run_report
from alignkit.eval.plots import png_size, pixels
from alignkit.eval.run_folder import read_run
from alignkit.eval.run_report import summarize, write_run_report

START = "2026-01-01T00:00:00Z"
LOSSES = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4]  # steps 1..20


def make_run(folder: Path, rows: list[dict], *, final_step: int | None = None,
             checkpoints: dict[int, bool] | None = None, written_after: float = 754.0) -> Path:
    """A run folder as `alignkit train` leaves it: marker, config.yaml (with its start line), metrics.jsonl (its
    modification time `written_after` seconds after the start), final/ or checkpoints (step -> has manifest)."""
    folder.mkdir(parents=True)
    (folder / ".alignkit-run").write_text('{"tool": "alignkit"}\n')
    (folder / "config.yaml").write_text(
        f"# alignkit run\n# {START} started at step 0\nmodel:\n  name_or_path: tiny-model\n  lora: null\n"
        "data:\n  train: prefs.jsonl\n  eval: null\n  eval_fraction: 0.25\nobjective:\n  name: dpo\n  params:\n"
        "    beta: 0.1\noptim:\n  lr: 5.0e-06\n  warmup_steps: 2\n  schedule: cosine\nbatch_size: 8\n"
        "grad_accum: 4\nepochs: 1\nmax_steps: 20\n")
    metrics = folder / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows))
    stamp = calendar.timegm(time.strptime(START, "%Y-%m-%dT%H:%M:%SZ")) + written_after
    os.utime(metrics, (stamp, stamp))
    if final_step is not None:
        (folder / "final").mkdir()
        (folder / "final" / "training_state.json").write_text(json.dumps({"step": final_step}))
    for step, complete in (checkpoints or {}).items():
        checkpoint = folder / "checkpoints" / f"step-{step:06d}"
        checkpoint.mkdir(parents=True)
        if complete:
            (checkpoint / "manifest.json").write_text("{}")
    return folder


def dpo_rows() -> list[dict]:
    """20 steps: loss from LOSSES, margins = step/10, lr, 10 s per step (100 tokens at 10 tokens/s), eval at 10, 20."""
    rows = []
    for step, loss in enumerate(LOSSES, start=1):
        row = {"step": step, "loss": loss, "rewards/chosen": -0.1 * step, "rewards/rejected": -0.2 * step,
               "rewards/margins": step / 10, "rewards/accuracies": float(step % 2), "tokens_in_step": 100.0,
               "grad_norm": 1.5, "tokens_seen": 100 * step, "lr": 1e-6, "nonfinite_skipped": 0,
               "tokens_per_s": 10.0}
        if step % 10 == 0:
            row.update({"eval/loss": 0.5 + step / 100, "eval/rewards/margins": step / 20})
        rows.append(row)
    return rows


def sft_rows(n: int = 5) -> list[dict]:
    return [{"step": s, "loss": 2.0 / s, "nll": 2.0 / s, "tokens_in_step": 50.0, "grad_norm": 0.5, "lr": 1e-5,
             "tokens_per_s": 25.0} for s in range(1, n + 1)]


def table_row(markdown: str, first: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(f"| {first} |"))


def test_summary_last_and_tail_mean_equal_hand_computed(tmp_path):
    folder = make_run(tmp_path / "dpo", dpo_rows(), final_step=20)
    run = read_run(folder)
    loss = summarize(run, "loss")  # 10% of 20 lines: the last 2 (8, 4)
    assert (loss.last, loss.last_step, loss.tail_mean, loss.tail_count) == (4, 20, 6.0, 2)
    assert summarize(run, "loss", tail=0.25).tail_mean == pytest.approx((3 + 2 + 3 + 8 + 4) / 5)
    assert summarize(run, "rewards/margins").tail_mean == pytest.approx((1.9 + 2.0) / 2)
    evals = summarize(run, "eval/loss")  # logged on 2 lines: ⌈0.2⌉ = 1 value
    assert (evals.last, evals.tail_mean, evals.tail_count) == (pytest.approx(0.7), pytest.approx(0.7), 1)

    report, _ = write_run_report([folder])
    text = report.read_text()
    assert report == folder / "report.md"
    assert table_row(text, "loss") == "| loss | 4 | 20 | 6 | 19–20 (2 values) |"
    assert table_row(text, "rewards/margins") == "| rewards/margins | 2 | 20 | 1.95 | 19–20 (2 values) |"
    assert table_row(text, "eval/loss") == "| eval/loss | 0.7 | 20 | 0.7 | 20–20 (1 value) |"
    assert "tokens_seen |" not in text  # a counter, not a metric
    assert table_row(text, "objective") == "| objective | dpo (beta=0.1) |"
    assert table_row(text, "learning rate") == "| learning rate | 5e-06 |"
    assert table_row(text, "batch size") == "| batch size | 8 |"
    assert table_row(text, "grad accum") == "| grad accum | 4 |"
    assert table_row(text, "eval data") == "| eval data | 0.25 of train held out |"
    assert table_row(text, "steps done") == "| steps done | 20 |"
    assert "finished: `final/` written after step 20" in table_row(text, "status")
    assert table_row(text, "wall time (first start → last metrics line)").endswith("| 12 min 34 s |")
    assert table_row(text, "time in optimizer steps (Σ tokens_in_step / tokens_per_s)").endswith(
        "| 3 min 20 s over 20 logged steps |")  # 20 × 100 tokens / 10 tokens/s


def test_a_stopped_run_names_its_last_complete_checkpoint(tmp_path):
    folder = make_run(tmp_path / "stopped", sft_rows(17), checkpoints={10: True, 15: True, 17: False})
    report, _ = write_run_report([folder])
    status = table_row(report.read_text(), "status")
    assert "stopped (no `final/`): last logged step 17" in status
    assert "`checkpoints/step-000015/`" in status  # step-000017 has no manifest: not complete


def plot_names(report: Path) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(plots/([^)]+)\.png\)", report.read_text())


def test_plots_are_pngs_of_the_size_asked_and_only_of_what_was_logged(tmp_path):
    size = (4.0, 3.0)
    dpo = make_run(tmp_path / "dpo", dpo_rows())
    report, paths = write_run_report([dpo], size=size)
    assert plot_names(report) == ["loss", "rewards", "margins", "accuracy", "grad_norm", "lr", "tokens_per_s",
                                  "eval_loss", "eval_margins"]
    assert sorted(p.name for p in (dpo / "plots").iterdir()) == sorted(f"{n}.png" for n in plot_names(report))
    for path in paths:
        assert path.stat().st_size > 1000 and png_size(path) == pixels(size) == (400, 300)

    sft = make_run(tmp_path / "sft", sft_rows())
    report, _ = write_run_report([sft], smoothing=0.5)
    assert plot_names(report) == ["loss", "grad_norm", "lr", "tokens_per_s", "nll"]  # no rewards: no reward plots


@contextmanager
def spying_figure(axes_by_file: dict, real=run_report.figure):
    """`figure` as run_report calls it, keeping each plot's axes by file name."""
    @contextmanager
    def spy(size, path):
        with real(size, path) as (fig, axes):
            yield fig, axes
        axes_by_file[Path(path).stem] = axes
    yield spy


def test_two_runs_are_drawn_on_the_same_axes_one_line_each(tmp_path, monkeypatch):
    dpo = make_run(tmp_path / "dpo", dpo_rows())
    sft = make_run(tmp_path / "sft", [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 3.0}])
    axes: dict = {}
    with spying_figure(axes) as spy:
        monkeypatch.setattr(run_report, "figure", spy)
        write_run_report([dpo, sft], tmp_path / "both")
    assert [line.get_label() for line in axes["loss"].lines] == ["dpo", "sft"]
    assert list(axes["loss"].lines[1].get_ydata()) == [1.0, 3.0]
    assert [line.get_label() for line in axes["rewards"].lines] == ["dpo: chosen", "dpo: rejected"]  # sft has none
    assert axes["loss"].get_legend() is not None

    axes.clear()
    with spying_figure(axes) as spy:
        monkeypatch.setattr(run_report, "figure", spy)
        write_run_report([dpo, sft], tmp_path / "both", overwrite=True, smoothing=0.5)
    lines = axes["loss"].lines  # per run: the raw curve, then its EMA over it
    assert [line.get_label() for line in lines] == ["_raw", "dpo", "_raw", "sft"]
    # debiased EMA by hand, w = 0.5: s1 = 0.5·1 → 0.5/0.5 = 1; s2 = 0.25 + 1.5 = 1.75 → 1.75/0.75
    assert list(lines[3].get_ydata()) == pytest.approx([1.0, 1.75 / 0.75])
    assert list(lines[2].get_ydata()) == [1.0, 3.0]


EVAL_REPORT = """# Win rate

![win rate](plots/win.png)
See [the samples](samples.jsonl), [the paper](https://arxiv.org/abs/2305.18290) and [below](#notes).
<img src="plots/kl.png" width="300">

## Notes
```
# not a heading
```
"""


def test_a_subfolder_report_is_embedded_with_links_that_still_resolve(tmp_path):
    folder = make_run(tmp_path / "run", sft_rows())
    (folder / "eval" / "plots").mkdir(parents=True)
    (folder / "eval" / "report.md").write_text(EVAL_REPORT)
    for name in ("plots/win.png", "plots/kl.png", "samples.jsonl"):
        (folder / "eval" / name).write_text("x")
    text = write_run_report([folder])[0].read_text()
    evaluation = text.split("## Evaluation\n", 1)[1]
    assert "![win rate](eval/plots/win.png)" in evaluation and 'src="eval/plots/kl.png"' in evaluation
    assert "[the samples](eval/samples.jsonl)" in evaluation
    assert "(https://arxiv.org/abs/2305.18290)" in evaluation and "[below](#notes)" in evaluation
    assert "#### Win rate" in evaluation and "##### Notes" in evaluation and "\n# not a heading" in evaluation

    out = tmp_path / "elsewhere" / "report"
    text = write_run_report([folder], out)[0].read_text()
    targets = re.findall(r"\]\(([^)#]+)\)|src=\"([^\"]+)\"", text.split("## Evaluation\n", 1)[1])
    relative = [a or b for a, b in targets if not (a or b).startswith("http")]
    assert "../../run/eval/plots/win.png" in relative
    assert all((out / target).is_file() for target in relative)  # eval/report.md, plots, samples

    (folder / "mine").mkdir()  # a report of ours in a subfolder is not an evaluation
    write_run_report([folder, make_run(tmp_path / "other", sft_rows())], folder / "mine")
    text = write_run_report([folder], overwrite=True)[0].read_text()
    assert "`eval/`" in text and "`mine/`" not in text


def test_a_real_tiny_training_run_renders(tmp_path, tiny_chat_model_dir, monkeypatch, capsys):
    from alignkit.train.config import load_config
    from alignkit.train.loop import train

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "tiny"
    data = write_pairs(tmp_path / "prefs.jsonl")
    train(load_config(None, [f"model.name_or_path={tiny_chat_model_dir}", f"data.train={data}",
                             "data.eval_fraction=0.25", "max_steps=3", "batch_size=2", "save_every=2",
                             "progress=false", "report_to=none", f"output_dir={run}"]))
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main(["report", str(run)]) == 0
    report = run / "report.md"
    names = plot_names(report)
    assert {"loss", "rewards", "margins", "accuracy", "grad_norm", "lr", "tokens_per_s", "eval_loss",
            "eval_rewards"} <= set(names)
    assert all(png_size(run / "plots" / f"{name}.png") == pixels() for name in names)
    assert "| steps done | 3 |" in report.read_text() and "finished" in table_row(report.read_text(), "status")
    assert f"wrote {report}" in capsys.readouterr().out

    assert main(["report", str(run)]) == 2  # an earlier report: only with --overwrite
    assert "--overwrite" in capsys.readouterr().err
    (run / "plots" / "nll.png").write_bytes(b"stale")  # linked by the earlier report, not drawn again
    report.write_text(report.read_text() + "\n![old](plots/nll.png)\n")
    (run / "plots" / "notes.txt").write_text("mine")
    assert main(["report", str(run), "--overwrite"]) == 0
    assert not (run / "plots" / "nll.png").exists() and (run / "plots" / "notes.txt").exists()
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing else in the run folder touched


def bad(tmp_path: Path, capsys, argv: list[str]) -> str:
    assert main(["report", *argv]) == 2
    error = capsys.readouterr().err
    assert error.startswith("alignkit report: error: ")
    return error


def test_bad_input_fails_with_a_message_and_status_2(tmp_path, capsys):
    assert "no such run folder" in bad(tmp_path, capsys, [str(tmp_path / "missing")])
    (tmp_path / "plain").mkdir()
    assert "not an alignkit training run" in bad(tmp_path, capsys, [str(tmp_path / "plain")])
    folder = make_run(tmp_path / "run", sft_rows())
    metrics = folder / "metrics.jsonl"
    good = metrics.read_text().splitlines()
    cases = {"": "empty (no step logged yet)",
             "\n".join([good[0], "{\"step\": 2, \"loss\": 0.", *good[2:]]): f"{metrics}, line 2: not valid JSON",
             "\n".join([good[0], "", *good[1:]]): f"{metrics}, line 2: empty line",
             "\n".join([good[0], '{"step": 2, "loss": "low"}']): f"{metrics}, line 2: 'loss' is not a number",
             "\n".join([good[0], '[1, 2]']): f"{metrics}, line 2: not a JSON object",
             "\n".join([good[0], '{"loss": 1.0}']): f"{metrics}, line 2: no non-negative integer 'step'",
             "\n".join([good[1], good[0]]): f"{metrics}, line 2: step 1 follows step 2"}
    for text, message in cases.items():
        metrics.write_text(text + "\n" if text else "")
        assert message in bad(tmp_path, capsys, [str(folder)]), text
    metrics.write_text(good[0] + "\n" + good[1][:-3])
    assert "line 2 (the last line, unterminated" in bad(tmp_path, capsys, [str(folder)])
    metrics.unlink()
    assert f"{folder}: no metrics.jsonl" in bad(tmp_path, capsys, [str(folder)])

    other = make_run(tmp_path / "other", sft_rows())
    assert "several runs need --out DIR" in bad(tmp_path, capsys, [str(other), str(other)])
    assert "smoothing weight must be in [0, 1)" in bad(tmp_path, capsys, [str(other), "--smooth", "1"])
    assert "holds the input" in bad(tmp_path, capsys, [str(other), "--out", str(tmp_path)])
    assert not any(p.name == "report.md" for p in tmp_path.rglob("*"))  # nothing written by a failed report
