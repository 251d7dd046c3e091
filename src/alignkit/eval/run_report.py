"""`alignkit report`: the curves of one or more training runs (`metrics.jsonl`) as PNG plots, one line per run
on shared axes, and a Markdown summary (`report.md`): each run's configuration, steps, time, final metrics,
whether it finished, the plots, and the reports of evaluations saved in its subfolders.

The plots are chosen by what the runs logged: loss; implicit rewards (chosen and rejected); margins;
accuracy; gradient norm; learning rate; tokens/s; then every other metric of the objective (e.g. `nll`), and
the same for the `eval/...` keys of the eval split. A metric no run logged has no plot.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alignkit.data.writing import OutputPathError, write_text
from alignkit.eval.output import PLOTS, markdown_table, prepare_output
from alignkit.eval.plots import SIZE, figure
from alignkit.eval.run_folder import Run, read_run, step_seconds, wall_seconds

REPORT = "report.md"
HEADER = "<!-- alignkit report: training runs -->"  # marks our reports, so they are never embedded as evaluations
EVAL = "eval/"
BOOKKEEPING = ("step", "tokens_in_step", "tokens_seen", "nonfinite_skipped")  # counters, not curves
KNOWN_PLOTS = (  # (file name, title, y label, keys drawn together)
    ("loss", "loss", "loss", ("loss",)),
    ("rewards", "implicit rewards: chosen (solid), rejected (dashed)", "reward",
     ("rewards/chosen", "rewards/rejected")),
    ("margins", "reward margin (chosen − rejected)", "margin", ("rewards/margins",)),
    ("accuracy", "reward accuracy (chosen > rejected)", "accuracy", ("rewards/accuracies",)),
    ("grad_norm", "gradient norm (before clipping)", "norm", ("grad_norm",)),
    ("lr", "learning rate", "lr", ("lr",)),
    ("tokens_per_s", "throughput", "tokens / s", ("tokens_per_s",)),
)
STYLES = ("-", "--", ":", "-.")
MARKER_BELOW = 30  # series with fewer points (e.g. the eval split's) get markers


@dataclass(frozen=True)
class PlotSpec:
    name: str  # file name without .png
    title: str
    ylabel: str
    keys: tuple[str, ...]  # metrics drawn on these axes


@dataclass(frozen=True)
class Curve:
    label: str
    steps: list[int]
    values: list[float]
    color: int  # index into the colour cycle
    style: int  # index into STYLES


@dataclass(frozen=True)
class MetricSummary:
    key: str
    last: float
    last_step: int
    tail_mean: float  # mean of the last ⌈tail·n⌉ logged values
    tail_count: int
    tail_first_step: int


def check_fraction(name: str, value: float, *, upper_open: bool = False) -> None:
    """A smoothing weight is in [0, 1); a tail fraction in (0, 1]."""
    inside = 0 <= value < 1 if upper_open else 0 < value <= 1
    if not inside:
        raise ValueError(f"{name} must be in {'[0, 1)' if upper_open else '(0, 1]'}, got {value}")


def ema(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's debiased exponential moving average: s_t = w·s_{t−1} + (1−w)·x_t with s_0 = 0, shown as
    s_t / (1 − w^t), t counting the finite values (a non-finite value is shown as is and skipped). Source:
    tensorflow/tensorboard, tensorboard/components/vz_line_chart2/line-chart.ts (resmoothDataset)."""
    check_fraction("smoothing weight", weight, upper_open=True)
    smoothed, last, count = [], 0.0, 0
    for value in values:
        if not math.isfinite(value):
            smoothed.append(value)
            continue
        last, count = last * weight + (1 - weight) * value, count + 1
        smoothed.append(last / (1 - weight ** count))
    return smoothed


def summarize(run: Run, key: str, tail: float = 0.1) -> MetricSummary:
    """The last logged value of `key` and the mean of its last ⌈tail·n⌉ values (n: lines that logged it)."""
    check_fraction("tail fraction", tail)
    steps, values = run.series(key)
    count = max(1, math.ceil(tail * len(values) - 1e-9))
    return MetricSummary(key=key, last=values[-1], last_step=steps[-1], tail_mean=sum(values[-count:]) / count,
                         tail_count=count, tail_first_step=steps[-count])


def metric_keys(runs: Sequence[Run]) -> list[str]:
    """The logged metrics of any run (bookkeeping counters left out), in order of first appearance."""
    keys = dict.fromkeys(key for run in runs for key in run.keys() if key not in BOOKKEEPING)
    return list(keys)


def plot_specs(keys: Sequence[str]) -> list[PlotSpec]:
    """The plots of these metrics: the known groups first (training, then `eval/`), then one plot per other
    metric; a group is drawn when any of its keys was logged, with those keys only."""
    specs, placed = [], set()
    for prefix in ("", EVAL):
        for name, title, ylabel, group in KNOWN_PLOTS:
            present = tuple(prefix + key for key in group if prefix + key in keys)
            if present:
                tag = "eval " if prefix else ""
                specs.append(PlotSpec(prefix.replace("/", "_") + name, tag + title, ylabel, present))
                placed.update(present)
        for key in keys:
            if key.startswith(EVAL) == bool(prefix) and key not in placed:
                specs.append(PlotSpec(key.replace("/", "_"), key, key.removeprefix(prefix), (key,)))
    return specs


def curves_for(spec: PlotSpec, runs: Sequence[Run], labels: Sequence[str]) -> list[Curve]:
    """One curve per (run, key) that has values; several runs: colour = run, line style = key."""
    curves = []
    for index, (run, label) in enumerate(zip(runs, labels)):
        for number, key in enumerate(spec.keys):
            steps, values = run.series(key)
            if not steps:
                continue
            part = key.rsplit("/", 1)[-1]
            name = label if len(spec.keys) == 1 else part if len(runs) == 1 else f"{label}: {part}"
            curves.append(Curve(name, steps, values, color=index if len(runs) > 1 else number,
                                style=number if len(runs) > 1 or len(spec.keys) > 1 else 0))
    return curves


def plot_curves(curves: Sequence[Curve], path: str | os.PathLike, *, title: str, ylabel: str,
                smoothing: float = 0.0, size: tuple[float, float] = SIZE) -> Path:
    """Line plot of `curves` against the optimizer step; with `smoothing` > 0 each raw curve is drawn faint and
    its EMA (`ema`) over it with the label. Returns `path`."""
    with figure(size, path) as (fig, axes):
        for curve in curves:
            line = dict(color=f"C{curve.color % 10}", linestyle=STYLES[curve.style % len(STYLES)], markersize=3,
                        marker="o" if len(curve.steps) < MARKER_BELOW else None)
            raw = dict(alpha=0.3, linewidth=1.0, label="_raw") if smoothing > 0 else dict(label=curve.label)
            axes.plot(curve.steps, curve.values, **line, **raw)
            if smoothing > 0:
                axes.plot(curve.steps, ema(curve.values, smoothing), label=curve.label, **line)
        axes.set_title(title)
        smoothed = f"  (EMA {smoothing:g} over the raw curve, faint)" if smoothing > 0 else ""
        axes.set_xlabel("optimizer step" + smoothed)
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        if len(curves) > 1:
            axes.legend(fontsize="small")
        fig.tight_layout()
    return Path(path)


def run_labels(runs: Sequence[Run]) -> list[str]:
    """Each run's folder name; the folder path as given where two runs share a name."""
    names = [run.folder.name or str(run.folder) for run in runs]
    return [name if names.count(name) == 1 else str(run.folder) for name, run in zip(names, runs)]


def number(value: float) -> str:
    return f"{value:.4g}"


def cell(value: object) -> str:
    """A configuration value as the runs table shows it: numbers with 4 significant digits, mappings as
    `key=value, ...`, lists comma-separated."""
    if isinstance(value, float):
        return number(value)
    if isinstance(value, dict):
        return ", ".join(f"{key}={cell(item)}" for key, item in value.items())
    if isinstance(value, list):
        return ", ".join(cell(item) for item in value)
    return str(value)


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {rest} s" if hours else f"{minutes} min {rest} s" if minutes else f"{rest} s"


def setting(config: dict, dotted: str, default: str = "—") -> object:
    """`config["a"]["b"]` for "a.b"; `default` where a level is missing."""
    value: object = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return default if value is None else value


def config_rows(runs: Sequence[Run]) -> list[list[object]]:
    """The rows of the runs table: one per field, one column per run."""
    def objective(c: dict) -> str:
        params = setting(c, "objective.params", {})
        return f"{setting(c, 'objective.name')} ({cell(params) if params else 'its default parameters'})"

    def held_out(c: dict) -> object:
        fraction = setting(c, "data.eval_fraction", 0)
        return setting(c, "data.eval", f"{fraction:g} of train held out" if fraction else "none")

    def length(c: dict) -> str:
        steps = setting(c, "max_steps")
        return f"max_steps {steps}" if steps != "—" else f"{setting(c, 'epochs')} epoch(s)"

    def times(run: Run) -> tuple[str, str]:
        wall, inside = wall_seconds(run), step_seconds(run)
        return ("—" if wall is None else duration(wall),
                "—" if inside is None else f"{duration(inside[0])} over {inside[1]} logged steps")

    fields = [
        ("model", lambda r: setting(r.config, "model.name_or_path")),
        ("LoRA", lambda r: setting(r.config, "model.lora", "none")),
        ("objective", lambda r: objective(r.config)),
        ("train data", lambda r: setting(r.config, "data.train")),
        ("eval data", lambda r: held_out(r.config)),
        ("batch size", lambda r: setting(r.config, "batch_size")),
        ("grad accum", lambda r: setting(r.config, "grad_accum")),
        ("learning rate", lambda r: setting(r.config, "optim.lr")),
        ("schedule", lambda r: f"{setting(r.config, 'optim.schedule')}, "
                               f"{setting(r.config, 'optim.warmup_steps')} warmup steps"),
        ("length", lambda r: length(r.config)),
        ("steps done", lambda r: r.status.steps),
        ("status", lambda r: r.status.describe()),
        ("starts", lambda r: "; ".join(r.history) or "—"),
        ("wall time (first start → last metrics line)", lambda r: times(r)[0]),
        ("time in optimizer steps (Σ tokens_in_step / tokens_per_s)", lambda r: times(r)[1]),
        ("tokens seen", lambda r: int(r.rows[-1].get("tokens_seen", 0)) or "—"),
    ]
    return [[field, *(cell(get(run)) for run in runs)] for field, get in fields]


def metrics_table(run: Run, keys: Sequence[str], tail: float) -> str:
    header = ["metric", "last", "step", f"mean of last {tail:.0%}", "over steps"]
    rows = []
    for key in keys:
        if run.series(key)[0]:
            s = summarize(run, key, tail)
            values = f"{s.tail_count} value" + ("s" if s.tail_count > 1 else "")
            rows.append([key, number(s.last), s.last_step, number(s.tail_mean),
                         f"{s.tail_first_step}–{s.last_step} ({values})"])
    return markdown_table(header, rows)


LINK = re.compile(r"(\]\(\s*)(<[^>]*>|[^)\s]+)|(\bsrc=[\"'])([^\"']+)")
ABSOLUTE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*:|/|#)")
HEADING = re.compile(r"^(#{1,6})(?=\s)")


def subfolder_reports(run: Run) -> list[Path]:
    """The `report.md` of each immediate subfolder of the run (e.g. `eval/` by `alignkit eval`), not ours."""
    found = []
    for folder in sorted(p for p in run.folder.iterdir() if p.is_dir()):
        report = folder / REPORT
        if report.is_file() and not report.read_text(encoding="utf-8").startswith(HEADER):
            found.append(report)
    return found


def relink(markdown: str, source: Path, out: Path) -> str:
    """`markdown` (written in folder `source`) with every relative link and image target rewritten to point at
    the same file from folder `out`; URLs, absolute paths and #anchors are kept."""
    def moved(target: str) -> str:
        bracketed = target.startswith("<")
        path, hash_, fragment = target.strip("<>").partition("#")
        if not path or ABSOLUTE.match(path):
            return target
        new = Path(os.path.relpath(Path(source, path).absolute(), Path(out).absolute())).as_posix() + hash_ + fragment
        return f"<{new}>" if bracketed else new

    def replace(match: re.Match) -> str:
        if match.group(1) is not None:
            return match.group(1) + moved(match.group(2))
        return match.group(3) + moved(match.group(4))

    return LINK.sub(replace, markdown)


def demote(markdown: str, levels: int) -> str:
    """Headings moved `levels` down (at most h6), outside fenced code blocks."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced:
            line = HEADING.sub(lambda m: "#" * min(6, len(m.group(1)) + levels), line)
        lines.append(line)
    return "\n".join(lines)


def evaluation_section(runs: Sequence[Run], labels: Sequence[str], out: Path) -> str:
    """'## Evaluation' with each run's subfolder reports, links rewritten to work from `out` ('' if none)."""
    parts = []
    for run, label in zip(runs, labels):
        for report in subfolder_reports(run):
            link = Path(os.path.relpath(report.absolute(), out.absolute())).as_posix()
            body = relink(report.read_text(encoding="utf-8"), report.parent, out)
            parts.append(f"### {label}: `{report.parent.name}/` ([{report.parent.name}/{REPORT}]({link}))\n\n"
                         f"{demote(body, 3).strip()}\n")
    return "## Evaluation\n\n" + "\n".join(parts) if parts else ""


def compose(runs: Sequence[Run], labels: Sequence[str], plots: Sequence[tuple[PlotSpec, Path]], out: Path,
            tail: float) -> str:
    """The whole report.md."""
    keys = metric_keys(runs)
    lines = [HEADER, f"# Training report: {', '.join(labels)}", "", "## Runs", "",
             markdown_table(["", *labels], config_rows(runs)), "## Final metrics", "",
             f"The last logged value, and the mean of the last ⌈{tail:g}·n⌉ of the n lines that logged the "
             "metric.", ""]
    for run, label in zip(runs, labels):
        lines += ([f"### {label}", ""] if len(runs) > 1 else []) + [metrics_table(run, keys, tail)]
    lines += ["## Plots", ""]
    for spec, path in plots:
        lines += [f"![{spec.title}]({path.relative_to(out).as_posix()})", ""]
    evaluation = evaluation_section(runs, labels, out)
    return "\n".join(lines) + ("\n" + evaluation if evaluation else "")


def output_folder(runs: Sequence[Run], out: str | os.PathLike | None, overwrite: bool) -> Path:
    """Where the report goes, checked before any plot is drawn: the run folder for one run (unless `out`);
    `out` (required for several runs) otherwise. An earlier report is only replaced with `overwrite`."""
    if out is None and len(runs) > 1:
        raise ValueError("several runs need --out DIR: the folder their shared report and plots go to")
    folder = runs[0].folder if out is None else Path(out).expanduser()
    if len(runs) == 1 and folder.absolute().resolve() == runs[0].folder.absolute().resolve():
        earlier = [p for p in (folder / REPORT, folder / PLOTS) if p.exists()]
        if earlier and not overwrite:
            raise OutputPathError(f"{earlier[0]}: an earlier report is there; pass --overwrite to regenerate "
                                  f"{REPORT} and {PLOTS}/ (nothing else in the run folder is touched)")
        (folder / PLOTS).mkdir(exist_ok=True)
        return folder
    return prepare_output(folder, overwrite=overwrite, inputs=[run.folder for run in runs])


def remove_stale_plots(out: Path, written: Sequence[Path]) -> None:
    """Delete the plots an earlier report in `out` linked to that this one did not redraw."""
    previous = out / REPORT
    if not previous.is_file():
        return
    linked = re.findall(rf"\]\({PLOTS}/([^)/\s]+\.png)\)", previous.read_text(encoding="utf-8"))
    for name in set(linked) - {path.name for path in written}:
        (out / PLOTS / name).unlink(missing_ok=True)


def write_run_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike | None = None, *,
                     overwrite: bool = False, smoothing: float = 0.0, tail: float = 0.1,
                     size: tuple[float, float] = SIZE) -> tuple[Path, list[Path]]:
    """Read and check every run, check the output folder, draw the plots, write `report.md` (last, so it never
    links a plot not yet written). Returns (report path, plot paths)."""
    if not run_dirs:
        raise ValueError("name at least one run folder")
    check_fraction("smoothing weight", smoothing, upper_open=True)
    check_fraction("tail fraction", tail)
    runs = [read_run(folder) for folder in run_dirs]
    labels = run_labels(runs)
    folder = output_folder(runs, out, overwrite)
    plots = []
    for spec in plot_specs(metric_keys(runs)):
        path = plot_curves(curves_for(spec, runs, labels), folder / PLOTS / f"{spec.name}.png", title=spec.title,
                           ylabel=spec.ylabel, smoothing=smoothing, size=size)
        plots.append((spec, path))
    report = compose(runs, labels, plots, folder, tail)
    remove_stale_plots(folder, [path for _, path in plots])
    return write_text(report, folder / REPORT), [path for _, path in plots]
