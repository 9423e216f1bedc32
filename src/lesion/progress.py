"""Progress bars for long work (CLI convention: anything over a second shows progress on stderr).

Bars are shown when stderr is a terminal (or ``LESION_PROGRESS=1`` forces them), and are off when
``LESION_NO_PROGRESS`` is set (tests, CI logs) or after ``set_enabled(False)`` (the CLI's ``--quiet``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
_enabled = True


def set_enabled(enabled: bool) -> None:
    """Turn progress bars on or off for this process."""
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    """Whether progress bars are shown."""
    if not _enabled or os.environ.get("LESION_NO_PROGRESS"):
        return False
    return bool(os.environ.get("LESION_PROGRESS")) or sys.stderr.isatty()


def bar(total: int | None = None, desc: str = "", unit: str = "it") -> tqdm:
    """A progress bar on stderr (use as a context manager; call `.update(n)`)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled(), leave=False, dynamic_ncols=True)


def track(items: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate over `items` with a progress bar."""
    yield from tqdm(items, desc=desc, total=total, unit=unit, disable=not enabled(), leave=False,
                    dynamic_ncols=True)
