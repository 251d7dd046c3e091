"""`alignkit represent align`: align two word-embedding spaces and report held-out word translation P@1/5/10.

    alignkit represent align --source glove --target smollm2-135m-instruct \\
        --train-words 5000 --test-words 1500 --out runs/represent/align.json

The methods live in `alignkit.represent.spaces`, the demonstration in `alignkit.represent.word_demo`. This module
imports neither torch nor transformers until the command runs.
"""

from __future__ import annotations

import argparse

from alignkit.cli.common import RAW, require

SOURCES = ("glove",)
REDUCTIONS = ("semi-orthogonal", "pca")  # alignkit.represent.spaces.REDUCTIONS, repeated to stay torch-free
ALIGN_EPILOG = """\
source: the --source-vocab most frequent GloVe 6B 50-d words; target: the tokens of --target that are a space
marker plus a lower-case word (" word", as words appear mid-sentence), rows of its input embedding matrix.
Both spaces: unit length, mean centering, unit length. The dictionary is the words in both vocabularies, in
GloVe frequency order: the first --train-words train, the next --test-words test. Map x -> W x:
  unaligned        a seeded random semi-orthogonal W (chance level)
  least squares    W = argmin ||X W^T - Y||  (torch.linalg.lstsq)
  procrustes       W = U V^T, U S V^T = SVD(Y^T X): semi-orthogonal (thin SVD), and with PCA of the wider side
  refinement       Procrustes from the identical-strings seed (test words removed), then --iterations rounds of
                   mutual CSLS nearest neighbours among the --top-n most frequent words + Procrustes (MUSE)
retrieval over the whole target vocabulary, by cosine (NN) and CSLS = 2cos - r_T - r_S (--csls-k neighbours,
Conneau et al. 2018, arXiv 1710.04087, Eq. 6); P@k counts a test word correct when its target is in the top k.
output (--out FILE.json): settings, vocabulary sizes, P@1/5/10 per method and criterion, the refinement's
dictionaries (size, identical-word fraction), seconds.
"""


def add_spaces_verbs(subparsers: argparse._SubParsersAction) -> None:
    """Add `align` to the `alignkit represent` subcommands."""
    parser = subparsers.add_parser("align", help="align word-embedding spaces (Procrustes, least squares, "
                                                 "refinement) and report P@1/5/10 by NN and CSLS",
                                   description="Align GloVe word vectors with a language model's input embeddings "
                                               "and evaluate by held-out word translation.",
                                   epilog=ALIGN_EPILOG, formatter_class=RAW)
    parser.add_argument("--source", default="glove", help="source space: glove (GloVe 6B 50-d, the default)")
    parser.add_argument("--target", default="smollm2-135m-instruct",
                        help="target model: name, folder or .gguf (default smollm2-135m-instruct)")
    parser.add_argument("--out", required=True, help="output .json file (a new file)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--source-vocab", type=int, default=20000, help="most frequent GloVe words (default 20000)")
    parser.add_argument("--target-vocab", type=int, help="first N target words by token id (default: all)")
    parser.add_argument("--train-words", type=int, default=5000, help="train dictionary size (default 5000)")
    parser.add_argument("--test-words", type=int, default=1500, help="test dictionary size (default 1500)")
    parser.add_argument("--iterations", type=int, default=5, help="refinement rounds (default 5)")
    parser.add_argument("--top-n", type=int, default=10000, help="refinement: most frequent words searched "
                                                                 "(default 10000)")
    parser.add_argument("--csls-k", type=int, default=10, help="CSLS neighbourhood size (default 10)")
    parser.add_argument("--reduction", default="semi-orthogonal",
                        help="refinement's width change: semi-orthogonal (default) or pca")
    parser.add_argument("--seed", type=int, default=0, help="seed of the unaligned random map (default 0)")
    parser.add_argument("--batch-size", type=int, default=1024, help="query rows per similarity block")
    parser.set_defaults(run=run_align, parser=parser)


def check_arguments(args: argparse.Namespace) -> None:
    """ValueError naming the flag for any argument that cannot work (before torch is imported)."""
    require(args.source in SOURCES, f"--source: unknown source {args.source!r}; choose one of {', '.join(SOURCES)}")
    require(args.reduction in REDUCTIONS, f"--reduction: unknown {args.reduction!r}; choose one of "
                                          f"{', '.join(REDUCTIONS)}")
    for flag, value, least in (("--source-vocab", args.source_vocab, 1), ("--train-words", args.train_words, 1),
                               ("--test-words", args.test_words, 1), ("--iterations", args.iterations, 0),
                               ("--top-n", args.top_n, 1), ("--csls-k", args.csls_k, 1),
                               ("--batch-size", args.batch_size, 1)):
        require(value >= least, f"{flag}: must be at least {least}, got {value}")
    require(args.target_vocab is None or args.target_vocab >= 1,
            f"--target-vocab: must be at least 1, got {args.target_vocab}")
    require(args.train_words + args.test_words <= args.source_vocab,
            f"--train-words + --test-words ({args.train_words + args.test_words}) exceed --source-vocab "
            f"({args.source_vocab})")


def run_align(args: argparse.Namespace) -> int:
    """Check every argument and the output path, then run the demonstration and write its JSON."""
    from alignkit.data.writing import check_output, write_json

    check_arguments(args)
    try:
        out = check_output(args.out, overwrite=args.overwrite, suffix=".json")
    except OSError as err:
        raise ValueError(f"--out: {err}") from None

    from alignkit.models.loading import ModelLoadError, resolve
    from alignkit.represent.word_demo import DemoConfig, results_table, run_demo

    try:
        resolve(args.target)
    except ModelLoadError as err:
        raise ValueError(f"--target: {err}") from None

    config = DemoConfig(target=args.target, source_vocab=args.source_vocab,
                        target_vocab=args.target_vocab, train_words=args.train_words,
                        test_words=args.test_words, iterations=args.iterations, top_n=args.top_n,
                        csls_k=args.csls_k, reduction=args.reduction, seed=args.seed, batch_size=args.batch_size)
    result = run_demo(config)
    write_json(result, out)
    print(results_table(result))
    print(f"wrote {out} ({result['wall_s']} s)")
    return 0
