"""The one exception type the data layer raises for bad input data."""

from __future__ import annotations

from collections.abc import Sequence

MAX_LISTED = 20


class DataError(ValueError):
    """Bad input data. The message names the file, the line or row, and the field of every bad row.

    ``problems`` holds one message per bad row (all of them, even when the message lists only the first
    ``MAX_LISTED``), so callers can inspect them programmatically.
    """

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems) or (message,)

    @classmethod
    def from_problems(cls, problems: Sequence[str], what: str = "rows") -> DataError:
        """One error for several bad rows: a single problem is the message itself; several are listed,
        one per line, at most ``MAX_LISTED`` of them followed by ``... and N more``."""
        if len(problems) == 1:
            return cls(problems[0], problems)
        listed = "\n".join(f"  - {problem}" for problem in problems[:MAX_LISTED])
        more = len(problems) - MAX_LISTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        return cls(f"{len(problems)} bad {what}; fix them all:\n{listed}{tail}", problems)


def raise_if_any(problems: Sequence[str], what: str = "rows") -> None:
    """Raise one DataError listing ``problems`` when there are any."""
    if problems:
        raise DataError.from_problems(problems, what)
