"""What the dataset verbs share: --data/--out arguments, reading the input after checking the output, and
writing the output (a new .jsonl file, atomically, never over an input: `alignkit.data.writing`)."""

from __future__ import annotations

import argparse

RAW = argparse.RawDescriptionHelpFormatter


def io_arguments(parser: argparse.ArgumentParser, what: str = "rows") -> None:
    parser.add_argument("--data", required=True, help=f"input {what}: JSONL/JSON/Parquet/CSV or a save_to_disk folder")
    parser.add_argument("--out", required=True, help="output .jsonl file (a new file; never the input)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def require(ok: bool, message: str) -> None:
    """A check of the arguments: ValueError(message) when it fails (reported by `main` as exit status 2)."""
    if not ok:
        raise ValueError(message)


def inputs_of(args: argparse.Namespace) -> list[str]:
    """The files a verb reads (never overwritten): --data, and --reference-samples where given."""
    extra = getattr(args, "reference_samples", None)
    return [args.data] + ([extra] if extra else [])


def read_rows(args: argparse.Namespace) -> list:
    """The input records, after checking that --out is a new file (before any slow work)."""
    from alignkit.data import load_records
    from alignkit.data.writing import check_output

    check_output(args.out, inputs_of(args), overwrite=args.overwrite)
    return load_records(args.data)


def write_rows(args: argparse.Namespace, rows: list[dict]) -> None:
    from alignkit.data.writing import write_jsonl

    write_jsonl(rows, args.out, inputs=inputs_of(args), overwrite=args.overwrite)
    print(f"wrote {len(rows)} rows to {args.out}")


def flagged(flag: str, function, *args, **kwargs):
    """`function(*args, **kwargs)`, its user errors (a model that does not load, a bad value, a missing file)
    re-raised with `flag` in front, so the message names the argument."""
    from alignkit.models.loading import ModelLoadError

    try:
        return function(*args, **kwargs)
    except ModelLoadError as err:
        raise ModelLoadError(f"{flag}: {err}") from None
    except (ValueError, OSError) as err:
        raise ValueError(f"{flag}: {err}") from None
