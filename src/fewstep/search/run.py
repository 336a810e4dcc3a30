"""search_sample: draw n items with a search spec ('best-of:n=8,verifier=classifier' | 'noise-search:...') on a
sampling plan, and count what it cost — every candidate, kept or discarded, and every verifier call."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch

from fewstep.accel.base import parse_spec
from fewstep.config import build_config
from fewstep.core.cond import CondLike, labels_of
from fewstep.core.errors import UserError
from fewstep.data.base import Dataset
from fewstep.metrics.cost import count_flops
from fewstep.models.info import LoadedModel
from fewstep.plan import SamplingPlan
from fewstep.search.best_of_n import BestOfConfig, Outcome, best_of_n
from fewstep.search.candidates import Candidates
from fewstep.search.noise_search import NoiseSearchConfig, noise_search
from fewstep.search.verifiers import VERIFIERS, Verifier, build_verifier


@dataclass(frozen=True)
class SearchMethod:
    """A config dataclass, the search function and what it does."""

    config: type
    fn: Callable[[Candidates, Any], Outcome]
    summary: str


SEARCHES: dict[str, SearchMethod] = {
    "best-of": SearchMethod(BestOfConfig, best_of_n, "N initial noises per item, keep the verifier's best"),
    "noise-search": SearchMethod(NoiseSearchConfig, noise_search,
                                 "best of n, then rounds of n neighbours of the best noise (zero-order search)"),
}


def parse_search(spec: str) -> tuple[str, Any]:
    """(method name, its checked config) of a spec like 'best-of:n=8,verifier=classifier'."""
    name, settings = parse_spec(spec)
    if name not in SEARCHES:
        raise UserError(f"unknown search {name!r}; choose one of {', '.join(SEARCHES)} (e.g. best-of:n=8)")
    settings = {("lambda_" if k == "lambda" else k): v for k, v in settings.items()}
    config = build_config(SEARCHES[name].config, settings, where=f"search {name}")
    if config.n < 1:
        raise UserError(f"search {name}: n must be at least 1, got {config.n}")
    if not 0 < getattr(config, "lambda_", 0.5) <= 1:
        raise UserError(f"search {name}: lambda must lie in (0, 1], got {config.lambda_}")
    if getattr(config, "rounds", 0) < 0:
        raise UserError(f"search {name}: rounds must be at least 0, got {config.rounds}")
    return name, config


@dataclass
class SearchResult:
    """The kept samples and the search's whole cost per returned sample."""

    samples: torch.Tensor
    labels: CondLike
    scores: torch.Tensor  # the verifier's score of each kept sample
    choice: torch.Tensor  # the candidate each kept sample came from (0 = the plain sample's noise)
    search: str
    verifier: str
    ruler_independent: bool  # the verifier is not the ruler's own network
    candidates: int | float  # candidates drawn per item (a mean when `accept` stopped some items early)
    nfe: int | float  # denoiser calls per returned sample over every candidate drawn (a mean, as candidates)
    nfe_total: int  # denoiser calls per sample summed over every candidate of every item
    flops_per_sample: float  # everything: every candidate's sampler run (and decoding) and every verifier call
    verifier_flops_per_sample: float  # the verifier's share of flops_per_sample
    seconds_per_sample: float  # wall-clock of the whole search divided by n (one run, not a median)

    def row(self) -> dict[str, Any]:
        """The fields a result row records."""
        return {k: v for k, v in asdict(self).items() if k not in ("samples", "labels", "scores", "choice")} | {
            "mean_verifier_score": float(self.scores.mean()),
            "kept_plain_fraction": float((self.choice == 0).double().mean())}


def model_data(model: LoadedModel, dataset: str | None = None) -> Dataset | None:
    """The dataset built-in verifiers are trained on: a text-to-image model's is the captions set at the resolution
    the captions ruler reads its images at; another model's the dataset it records (or `dataset`), else None."""
    from fewstep.data import load_dataset, load_recorded
    from fewstep.metrics.captions import ruler_resolution
    from fewstep.models.info import image_size

    if model.prompt_encoder is not None:
        return load_dataset("captions", resolution=ruler_resolution(model.info.image_shape[-1]))
    return load_recorded(model.info.data, model.info.dataset, dataset, image_size(model.info))


def search_sample(model: LoadedModel, plan: SamplingPlan, n: int, search: str,
                  verifier: str | Verifier | Callable | None = None, data: Dataset | None = None, seed: int = 0,
                  cond: CondLike = None, request: Any = None, batch_size: int = 256,
                  device: str | torch.device = "cpu", indices: Sequence[int] | None = None) -> SearchResult:
    """Search n items (item i's plain sample from noise index indices[i] of `seed`, default i) with `plan` on
    `model`; `verifier` overrides the spec's.

    `request` is what the verifier checks (default: the class labels in `cond`; for prompts, the list of each item's
    prompt); `data` is the dataset a built-in verifier is trained on. FLOPs are counted over the whole search
    (torch.utils.flop_counter).
    """
    name, config = parse_search(search)
    checker = build_verifier(verifier if verifier is not None else config.verifier, data)
    request = labels_of(cond) if request is None else request
    start = time.perf_counter()
    with plan.applied(model) as run:
        candidates = Candidates(model, run, plan, checker, n, seed, cond, request, batch_size, device, indices,
                                config.accept)
        found: list[Outcome] = []
        flops = count_flops(lambda: found.append(SEARCHES[name].fn(candidates, config)))
    seconds = time.perf_counter() - start
    out = found[0]
    return SearchResult(out.samples, cond, out.scores, out.choice, search, checker.name, checker.ruler_independent,
                        per_item(candidates.drawn, n), per_item(candidates.nfe_total, n), candidates.nfe_total,
                        flops / n, checker.flops_per_sample * candidates.drawn / n, seconds / n)


def per_item(total: int, n: int) -> int | float:
    """total / n, an integer when it is one."""
    return total // n if total % n == 0 else total / n


@dataclass
class SearchedRows:
    """A search run for `fewstep eval`: its result, and the fields it adds to (and replaces in) a result row."""

    result: SearchResult

    def row(self, cost: dict[str, Any]) -> dict[str, Any]:
        """The search's fields; cost's per-candidate FLOPs and seconds are kept as candidate_*."""
        return {f"candidate_{k}": cost[k] for k in ("flops_per_sample", "seconds_per_sample")} | self.result.row() | {
            "seconds_method": "whole search / n, one run"}


def prompt_request(search: str, prompts: Sequence[str], n: int) -> list[str]:
    """The request of n items sampled on prompts (item i on prompts[i mod k]), checked against the search's verifier:
    the captions verifier reads only captions of its grammar, and the other built-in verifiers no prompts at all."""
    from fewstep.data.captions import caption_attributes

    request = [prompts[i % len(prompts)] for i in range(n)]
    head = parse_search(search)[1].verifier.strip().partition(":")[0]
    if head == "captions":
        try:
            caption_attributes(request)
        except UserError as e:
            raise UserError(f"the captions verifier scores captions of its grammar only: {e}") from None
    elif head in VERIFIERS:
        raise UserError(f"the {head} verifier does not read prompts; on a text-to-image model use verifier=captions "
                        "(caption prompts) or verifier=module.path:function")
    return request


def search_rows(model: LoadedModel, plan: SamplingPlan, n: int, search: str | None, data: Dataset | None,
                seed: int, cond: CondLike, batch_size: int, device: str | torch.device, request: Any = None,
                indices: Sequence[int] | None = None) -> SearchedRows | None:
    """search_sample for an eval row, or None without a search."""
    if not search:
        return None
    return SearchedRows(search_sample(model, plan, n, search, data=data, seed=seed, cond=cond, request=request,
                                      batch_size=batch_size, device=device, indices=indices))
