"""LoRA students (peft): adapters on the teacher's network, merged for export and written in diffusers' LoRA format."""

from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from fewstep.core.denoiser import backbone
from fewstep.core.errors import UserError

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LoRA weights name (load_lora_weights reads it)


def add_lora(denoiser: nn.Module, rank: int, alpha: float, targets: str) -> None:
    """Inject LoRA adapters (rank, alpha, target module names) into the denoiser's network; its base stays frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    net = backbone(denoiser)
    names = [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=names, init_lora_weights="gaussian")
    try:
        inject_adapter_in_model(config, net)
    except ValueError as e:
        raise UserError(f"--lora-targets {targets!r}: {str(e).splitlines()[0]}") from None
    net.peft_config = {"default": config}  # what peft's get_peft_model_state_dict reads
    freeze_base(denoiser)


def is_lora(module: nn.Module) -> bool:
    """Whether the module holds LoRA adapters (peft's layers carry lora_A; peft is not imported without them)."""
    return any(hasattr(m, "lora_A") for m in module.modules())


def freeze_base(module: nn.Module) -> nn.Module:
    """Only the LoRA parameters train (a module without adapters: all of them)."""
    lora = is_lora(module)
    for name, p in module.named_parameters():
        p.requires_grad_(not lora or "lora_" in name)
    return module


def merged(module: nn.Module) -> nn.Module:
    """A copy with every LoRA adapter merged into its base layer and removed, and without gradient checkpointing:
    a plain full network (an exported student, DMD2's fake score)."""
    out = copy.deepcopy(module)
    for m in out.modules():
        if getattr(m, "is_gradient_checkpointing", False) and hasattr(m, "disable_gradient_checkpointing"):
            m.disable_gradient_checkpointing()
    if not is_lora(out):
        return out
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, layer in list(out.named_modules()):
        if isinstance(layer, BaseTunerLayer):
            layer.merge()
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, layer.get_base_layer())
    for m in out.modules():
        if hasattr(m, "peft_config"):
            del m.peft_config
    return out


def save_lora(folder: Path, denoiser: nn.Module) -> None:
    """Write the adapters as diffusers' pytorch_lora_weights.safetensors (the U-Net's, for load_lora_weights), with
    their config (alpha) as its metadata."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    net = backbone(denoiser)
    layers = get_peft_model_state_dict(net)  # peft's key names, which diffusers reads (its old names miss convs)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, safe_serialization=True,
                                              unet_lora_adapter_metadata=net.peft_config["default"].to_dict())
