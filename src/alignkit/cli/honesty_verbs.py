"""`alignkit eval honesty` and `alignkit data honesty` (Alignment for Honesty, Yang et al. 2023, arXiv 2312.07000).

STUB: filled in by the honesty work; the parsers below only reserve the names.
"""

from __future__ import annotations

import argparse


def add_honesty_eval(evals: argparse._SubParsersAction) -> None:
    """Add `honesty` to the `alignkit eval` subcommands."""
    evals.add_parser("honesty", help="honesty: idk rate, prudence, over-conservativeness (stub)")


def add_honesty_data(transforms: argparse._SubParsersAction) -> None:
    """Add `honesty` to the `alignkit data` transforms."""
    transforms.add_parser("honesty", help="honesty training data from a model's own answers (stub)")
