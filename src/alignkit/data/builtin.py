"""Data files shipped inside the package, addressed as `builtin:<path>` (e.g. `builtin:demo/train.jsonl`)."""

from __future__ import annotations

from pathlib import Path

BUILTIN_PREFIX = "builtin:"
PACKAGE_DATA = Path(__file__).parent


def resolve_source(source):
    """Map `builtin:<path>` to the shipped file; anything else (path, Dataset, rows) passes through."""
    if not (isinstance(source, str) and source.startswith(BUILTIN_PREFIX)):
        return source
    path = PACKAGE_DATA / source[len(BUILTIN_PREFIX):]
    if not path.exists():
        shipped = sorted(str(p.relative_to(PACKAGE_DATA)) for p in PACKAGE_DATA.glob("*/*.jsonl"))
        raise FileNotFoundError(f"{source}: no such built-in data; shipped: {', '.join(shipped) or 'none'}")
    return path
