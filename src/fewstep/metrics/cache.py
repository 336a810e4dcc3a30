"""The on-disk cache for trained feature networks and reference features, keyed by a hash of their settings."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable

import torch

DEFAULT_CACHE = "~/.cache/fewstep"


def cache_dir() -> Path:
    """$FEWSTEP_CACHE, or ~/.cache/fewstep."""
    return Path(os.environ.get("FEWSTEP_CACHE") or DEFAULT_CACHE).expanduser()


def settings_hash(settings: dict) -> str:
    """16 hex digits of the SHA-256 of the settings as canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    """SHA-256 of the tensors' shapes, dtypes and bytes, so changed data never reuses a cache entry."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def cache_path(kind: str, name: str, digest: str, suffix: str) -> Path:
    """cache_dir()/kind/<dataset name as a file name>-<digest><suffix>."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[-60:] or "data"
    return cache_dir() / kind / f"{slug}-{digest}{suffix}"


def write_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """write(tmp) then rename tmp to path, so an interrupted run never leaves a half-written cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    tmp.replace(path)
    return path
