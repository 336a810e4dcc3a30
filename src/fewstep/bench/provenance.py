"""What a result row needs to be reproduced: model hash, versions, machine, time and command."""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import time
from pathlib import Path

import torch


def model_hash(folder: Path) -> str:
    """16 hex digits of the SHA-256 of a model folder's safetensors files (names and bytes)."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*.safetensors")):
        h.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def versions() -> dict[str, str]:
    """Versions of fewstep and the libraries that change numbers."""
    import diffusers

    from fewstep import __version__

    return {"fewstep": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "python": platform.python_version()}


def machine(device: str = "cpu") -> dict[str, object]:
    """The hardware a timing was taken on."""
    info: dict[str, object] = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                               "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def stamp() -> dict[str, object]:
    """UTC time and the command line that produced a row."""
    return {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": " ".join(sys.argv)}
