"""What a result row needs to be reproduced: model hash, versions, machine, time and command."""

from __future__ import annotations

import os
import platform
import sys
import time

import torch


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
