"""The --device every command takes: auto | cpu | cuda[:N] | mps, refused in one line when this machine lacks it."""

from __future__ import annotations

import re

import torch

from fewstep.core.errors import UserError


def check_device(device: str | None) -> None:
    """Refuse, before any compute, a device name fewstep does not know or this torch cannot use (None = a default)."""
    if device is None or device in ("auto", "cpu"):
        return
    if not re.fullmatch(r"cuda(:\d+)?|mps", device):
        raise UserError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("--device mps asked for, but this torch sees no Apple GPU; use --device cpu")
        return
    if not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for, but this torch sees no CUDA GPU; use --device cpu")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
