"""Reading and writing the files fewstep keeps: a bad file is a one-line UserError, a folder is replaced atomically.

Readers name the file and what it should be; writers leave no half-written file behind (write beside, rename), and
`remove_temporaries` clears what a killed writer left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from fewstep.core.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: appends are not locked
    fcntl = None

TEMPORARY = ".tmp-"  # prefix of every folder or file written beside its final name


def first_line(e: BaseException) -> str:
    """'Type: the first line of the message' of an exception, for one-line errors."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def read_json(path: str | Path, what: str = "a JSON file") -> Any:
    """The JSON value in `path`; a missing, unreadable or malformed file is a one-line UserError naming `what`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; expected {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise UserError(f"{path} is not {what} ({first_line(e)}); restore or delete it") from None


def read_json_lines(path: str | Path, what: str = "a JSON-lines file") -> list[dict[str, Any]]:
    """The objects of a JSON-lines file (none if it does not exist); a torn last line (a killed writer) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not {what} ({first_line(e)}); restore or delete it") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("a line is not a JSON object")
        except ValueError as e:
            if n == len(lines):  # a write cut short by a kill: the row was never complete
                break
            raise UserError(f"{path} line {n} is not {what} ({first_line(e)}); restore or delete it") from None
        rows.append(row)
    return rows


def append_json_lines(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Append one JSON object per line, after completing a torn last line so no row is glued to a broken one; writers
    in other processes wait for each other (an OS lock on the file), so concurrent runs never interleave a row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write("".join(json.dumps(row) + "\n" for row in rows).encode())
    return path


@contextlib.contextmanager
def replaced_folder(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; when the block succeeds it replaces `final` (rename), else it is
    removed, so `final` is always either the old folder or the complete new one."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TEMPORARY}{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.is_dir():
            old = final.parent / f"{TEMPORARY}old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_temporaries(folder: str | Path) -> None:
    """Delete what killed writers left in `folder` (names starting with .tmp-); call it while holding the folder."""
    folder = Path(folder)
    for p in folder.glob(TEMPORARY + "*") if folder.is_dir() else []:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def check_writable(path: str | Path, folder: bool, flag: str = "--out") -> None:
    """Refuse, before any compute, an output `path` that cannot be written: a folder that is a file, a file that is a
    folder, or a parent that cannot be created or written."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder")
    if not folder and path.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    parent = path if folder else path.parent
    existing = next((p for p in [parent, *parent.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: {existing} is not writable; choose another place")
    if folder and path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{flag} {path} is not writable; choose another place")
