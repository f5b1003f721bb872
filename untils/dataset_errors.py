"""The one error type for bad dataset files, and the helper that lists every problem in one error."""

from __future__ import annotations

from collections.abc import Sequence

MAX_LISTED_PROBLEMS = 20


class DatasetError(ValueError):
    """A dataset's files or annotations are missing or malformed."""


def problems_error(title: str, problems: Sequence[str]) -> DatasetError:
    """One error listing the first problems and how many there are in all."""
    shown = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    return DatasetError(f"{title}: {len(problems)} problem(s):\n  {shown}{tail}")
