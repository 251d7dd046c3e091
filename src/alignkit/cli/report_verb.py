"""`alignkit report RUN_DIR [RUN_DIR ...]`: training curves (PNG) and a Markdown summary of runs.

One run: `RUN_DIR/report.md` and `RUN_DIR/plots/*.png` (or `--out DIR`); several runs: one line per run on the
same axes, in `--out DIR` (required). `--overwrite` regenerates an earlier report's files; nothing else in a
run folder is touched.
"""

from __future__ import annotations

import argparse

from alignkit.cli.common import RAW

EPILOG = """\
plots: loss; chosen/rejected rewards; margins; accuracy; gradient norm; learning rate; tokens/s; the
objective's other metrics; the eval split's (eval/...): whichever the runs logged.
report.md: per run the configuration, steps done, wall time, last value and mean of the last 10% of each
metric, finished (final/) or stopped (last checkpoint), the plots, and every subfolder's report.md (e.g.
RUN_DIR/eval/ from `alignkit eval`) under "Evaluation", its links rewritten.

examples:
  alignkit report runs/demo
  alignkit report runs/dpo runs/ipo --out reports/dpo-vs-ipo --smooth 0.6
"""


def add_report_verb(verbs: argparse._SubParsersAction) -> None:
    """Add `report` to the `alignkit` subcommands."""
    parser = verbs.add_parser("report", help="plots and a Markdown summary of training runs",
                              description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=RAW)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="output_dir of `alignkit train`")
    parser.add_argument("--out", metavar="DIR", help="folder for report.md and plots/ (default: RUN_DIR for one run; "
                                      "required for several)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate an earlier report's files")
    parser.add_argument("--smooth", type=float, default=0.0, metavar="W",
                        help="EMA weight in [0, 1) drawn over the raw curves, as TensorBoard's slider "
                             "(default 0: raw only)")
    parser.add_argument("--tail", type=float, default=0.1, metavar="F",
                        help="fraction of the last logged values averaged in the summary (default 0.1)")
    parser.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    from alignkit.eval.run_report import write_run_report

    report, plots = write_run_report(args.run_dirs, args.out, overwrite=args.overwrite, smoothing=args.smooth,
                                     tail=args.tail)
    print(f"wrote {report} and {len(plots)} plots in {report.parent / 'plots'}")
    return 0
