"""Per-sample seeded noise: sample i of seed s gets the same noise at any batch size (edm2's stacked generator)."""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def sample_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed for one (seed, sample index, stream) triple; distinct triples never share a stream."""
    digest = hashlib.sha256(f"{int(seed)}/{int(index)}/{int(stream)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class SampleNoise:
    """One torch.Generator per sample, seeded by (seed, sample index)."""

    def __init__(self, seed: int, indices: Sequence[int] | torch.Tensor, device: torch.device | str = "cpu",
                 stream: int = 0):
        self.device = torch.device(device)
        self.generators = []
        for i in torch.as_tensor(indices).tolist():
            g = torch.Generator(device="cpu")  # stream separates e.g. initial noise from a sampler's per-step noise
            g.manual_seed(sample_seed(seed, i, stream))
            self.generators.append(g)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        """Stack one standard-normal draw of `shape` per sample: result is [len(indices), *shape]."""
        out = torch.stack([torch.randn(tuple(shape), generator=g) for g in self.generators])
        return out.to(self.device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard-normal noise shaped like x (first dim = samples), drawn from each sample's generator."""
        return self.randn(x.shape[1:]).to(dtype=x.dtype)

    def __len__(self) -> int:
        return len(self.generators)
