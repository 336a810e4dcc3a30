"""One run per folder: an OS lock (flock) on FOLDER/.lock held for the run's lifetime.

The lock belongs to the open file, so it dies with the process: a run killed with kill -9 never leaves a stale lock.
The holder writes its PID into the lock file, so a second run is refused with one line that names it. Nested holds
of one path in one process (distill -> its stages) are counted, not re-locked; under a
multi-process launch only the main process (RANK 0) locks.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from fewstep.core.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: runs are not locked
    fcntl = None

LOCK_NAME = ".lock"
F = TypeVar("F", bound=Callable[..., Any])
_held: dict[Path, tuple[int, int]] = {}  # resolved lock path -> (file descriptor, nesting depth)


def lock_path(path: str | Path) -> Path:
    """The lock file of a run folder: FOLDER/.lock."""
    return Path(path) / LOCK_NAME


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    pid = os.read(fd, 32).decode(errors="replace").strip()
    return f"PID {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def hold(path: str | Path) -> Iterator[None]:
    """Hold the lock of run folder `path` for the block; refused with a UserError if another process holds it."""
    if fcntl is None or os.environ.get("RANK", "0") != "0":
        yield
        return
    lock = lock_path(path)
    created, fresh = not lock.parent.exists(), not lock.exists()
    lock.parent.mkdir(parents=True, exist_ok=True)
    key = lock.resolve()
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
    else:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(f"{path} is in use by another fewstep run ({holder}); wait for it to finish or choose "
                            "another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[key] = (fd, 1)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        fd, depth = _held[key]
        if depth > 1:
            _held[key] = (fd, depth - 1)
        else:
            del _held[key]
            if created and [p.name for p in lock.parent.iterdir()] == [lock.name]:  # refused before writing anything
                lock.unlink()
                lock.parent.rmdir()
            elif fresh and failed:  # a refused run leaves a user's existing folder as it found it
                lock.unlink(missing_ok=True)
            os.close(fd)  # closing the last descriptor releases the flock


def locked(argument: str) -> Callable[[F], F]:
    """Decorator: hold the lock of the path passed as `argument` while the function runs."""

    def wrap(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with hold(signature.bind(*args, **kwargs).arguments[argument]):
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap
