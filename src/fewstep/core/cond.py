"""Conditioning of a batch: class labels, or text (prompt embeddings, pooled embeddings, mask, added conditions).

A denoiser's `cond` is one of:
- None: unconditional;
- a LongTensor [batch] of class labels (label `num_classes` is the null label of classifier-free guidance);
- a `Cond`, which carries labels or text conditioning and, for guidance, its own null condition (`negative`):
  the empty prompt's embeddings, or the user's negative prompt.

Samplers, guidance and distillers never look inside: they select rows, concatenate and ask for the null condition
through the functions below, so every kind of conditioning flows through them unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

import torch

from fewstep.core.errors import UserError


@dataclass(frozen=True, eq=False)
class Cond:
    """Per-row conditioning tensors (every one has the batch as its first dim) and the null condition of the rows."""

    labels: torch.Tensor | None = None  # [B] class labels
    text: torch.Tensor | None = None  # [B, L, D] prompt embeddings (a text encoder's hidden states)
    pooled: torch.Tensor | None = None  # [B, D] pooled prompt embeddings (SDXL, SD3, Flux)
    mask: torch.Tensor | None = None  # [B, L] attention mask of the prompt tokens (1 = attend)
    added: Mapping[str, torch.Tensor] = field(default_factory=dict)  # other per-row inputs, e.g. SDXL's time_ids
    negative: "Cond | None" = None  # the null condition of the same rows, for classifier-free guidance

    def _tensors(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("added", "negative")}

    def __len__(self) -> int:
        for t in [*self._tensors().values(), *self.added.values()]:
            if t is not None:
                return len(t)
        raise ValueError("an empty Cond has no batch size")

    def map(self, fn) -> "Cond":
        """Apply fn to every tensor (and to the null condition's)."""
        return Cond(**{k: None if v is None else fn(v) for k, v in self._tensors().items()},
                    added={k: fn(v) for k, v in self.added.items()},
                    negative=None if self.negative is None else self.negative.map(fn))

    def select(self, rows: torch.Tensor | slice) -> "Cond":
        """The rows `rows` of every tensor."""
        return self.map(lambda t: t[rows.to(t.device) if torch.is_tensor(rows) else rows])

    def to(self, device: torch.device | str) -> "Cond":
        return self.map(lambda t: t.to(device))

    def null(self) -> "Cond":
        """The null condition of these rows (for the unconditional pass of classifier-free guidance)."""
        if self.negative is None:
            raise UserError("classifier-free guidance needs a null condition; this conditioning has none")
        return self.negative

    def without_negative(self) -> "Cond":
        """The same rows without their null condition."""
        return replace(self, negative=None)


def cat_conds(conds: Sequence[Cond]) -> Cond:
    """Concatenate Conds row-wise (each holds the same kinds of tensors)."""
    first = conds[0]
    tensors = {k: None if v is None else torch.cat([c._tensors()[k] for c in conds]) for k, v in first._tensors().items()}
    added = {k: torch.cat([c.added[k] for c in conds]) for k in first.added}
    negatives = [c.negative for c in conds]
    negative = cat_conds(negatives) if all(n is not None for n in negatives) else None
    return Cond(**tensors, added=added, negative=negative)


CondLike = Cond | torch.Tensor | None


def cond_size(cond: CondLike) -> int | None:
    """Rows of a condition (None for unconditional)."""
    return None if cond is None else len(cond)


def select(cond: CondLike, rows: torch.Tensor | slice) -> CondLike:
    """The rows `rows` of a condition (labels or Cond); None stays None."""
    if cond is None:
        return None
    if isinstance(cond, Cond):
        return cond.select(rows)
    return torch.as_tensor(cond)[rows.to(cond.device) if torch.is_tensor(rows) else rows]


def concat(a: CondLike, b: CondLike) -> CondLike:
    """Two conditions row-wise: labels with labels, Cond with Cond."""
    if isinstance(a, Cond):
        return cat_conds([a, b])
    return torch.cat([torch.as_tensor(a), torch.as_tensor(b).to(torch.as_tensor(a).device)])


def null(cond: CondLike, num_classes: int = 0) -> CondLike:
    """The null condition of these rows: the null label `num_classes` for labels, a Cond's own negative."""
    if isinstance(cond, Cond):
        return cond.null()
    labels = torch.as_tensor(cond)
    return torch.full_like(labels, num_classes)


def drop(cond: CondLike, mask: torch.Tensor, num_classes: int = 0) -> CondLike:
    """Rows where mask is True replaced by their null condition (label / prompt dropout for guidance training)."""
    if cond is None:
        return None
    empty = null(cond, num_classes)
    if not isinstance(cond, Cond):
        return torch.where(mask.to(cond.device), empty, cond)
    pick = lambda a, b: torch.where(mask.to(a.device).reshape(-1, *[1] * (a.ndim - 1)), b, a)  # noqa: E731
    tensors = {k: None if v is None else pick(v, empty._tensors()[k]) for k, v in cond._tensors().items()}
    return Cond(**tensors, added={k: pick(v, empty.added[k]) for k, v in cond.added.items()}, negative=cond.negative)


def to_device(cond: CondLike, device: torch.device | str) -> CondLike:
    """The condition on `device`."""
    return None if cond is None else cond.to(device)


def labels_of(cond: CondLike) -> torch.Tensor | None:
    """The class labels of a condition (a labels tensor, or a Cond's labels), else None."""
    if cond is None or isinstance(cond, Cond):
        return None if cond is None else cond.labels
    return torch.as_tensor(cond).long()


def labels_or_null(cond: CondLike, num_classes: int, batch: int, device: torch.device) -> torch.Tensor | None:
    """Class labels for a class-conditional network: the given labels, or the null label num_classes for None."""
    if num_classes == 0:
        return None
    labels = labels_of(cond)
    if labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    return labels.to(device).reshape(batch)
