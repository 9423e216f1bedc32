"""Turning the PATH part of a data set name into an existing path (SPEC §5)."""

from __future__ import annotations

from pathlib import Path

from lesion.errors import LesionError


def existing_path(text: str, form: str) -> Path:
    """Expand `~` in `text` and return the absolute path, or raise `LesionError` if nothing is there.

    `form` is the data set form being loaded (e.g. ``"npz:PATH"``), named in the error message.
    """
    if not text.strip():
        example = form.replace("PATH", "~/data")
        raise LesionError(f"data set form {form} needs a path after the colon, e.g. {example}")
    path = Path(text.strip()).expanduser()
    if not path.exists():
        raise LesionError(f"{form}: {path} does not exist; check the path")
    return path.resolve()
