"""Prompts for data-free text-to-image methods: a UTF-8 file with one prompt per line."""

from __future__ import annotations

from pathlib import Path

from fewstep.core.errors import UserError
from fewstep.data.folder import read_text


def read_prompts(path: str | Path) -> list[str]:
    """The file's non-blank lines, stripped (a UserError for a missing, empty or non-UTF-8 file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompts file {path} does not exist")
    prompts = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompts file {path} holds no prompts; write one prompt per line")
    return prompts
