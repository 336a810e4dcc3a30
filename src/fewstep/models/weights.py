"""Network weights: safetensors only (pickle is refused), loaded into a diffusers or fewstep class; folder hashes."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from fewstep.core.errors import UserError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
NETWORK_CLASSES = ("UNet2DModel", "DiTTransformer2DModel", "ResidualMLP", "PixArtTransformer2DModel",
                   "SD3Transformer2DModel", "FluxTransformer2DModel")


def model_hash(folder: Path) -> str:
    """16 hex digits of the SHA-256 of a model folder's safetensors files (names and bytes)."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*.safetensors")):
        h.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def refuse_pickle(folder: Path) -> None:
    if not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise UserError(f"{folder} holds only pickle weights ({pickles[0]}); fewstep loads safetensors only: "
                            "re-save with save_pretrained(safe_serialization=True)")
        raise UserError(f"{folder} has no .safetensors weights")


def load_network(folder: Path, class_name: str) -> nn.Module:
    refuse_pickle(folder)
    if class_name == "ResidualMLP":
        from fewstep.models.mlp import ResidualMLP as cls
    elif class_name in NETWORK_CLASSES:
        import diffusers
        cls = getattr(diffusers, class_name)
    else:
        raise UserError(f"{folder}: network class {class_name!r} is not supported; fewstep reads {', '.join(NETWORK_CLASSES)}")
    net = cls.from_pretrained(folder, use_safetensors=True)
    if class_name == "DiTTransformer2DModel":
        from fewstep.models.networks import disable_label_dropout
        disable_label_dropout(net)
    return net.eval().requires_grad_(False)
