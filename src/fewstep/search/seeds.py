"""Golden seeds: rank a bank of initial noises by their mean verifier score over a calibration set of labels, and
measure whether the ranking transfers — to held-out labels and to another model (e.g. the student) — as a Spearman
correlation beside its noise floor (a permutation null, and the split-half agreement of the calibration set)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from fewstep.core.errors import UserError
from fewstep.models.info import LoadedModel
from fewstep.plan import PlanSettings, SamplingPlan, build_plan
from fewstep.search.candidates import Candidates
from fewstep.search.verifiers import Verifier, build_verifier

PERMUTATIONS = 2000
SPLITS = 50
FLOOR_SEED = 0


def seed_scores(model: LoadedModel, plan: SamplingPlan, bank: int, labels: Sequence[int | None],
                verifier: Verifier, seed: int = 0, batch_size: int = 256,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """Scores [bank, len(labels)]: bank entry k is the initial noise of sample index k of `seed`, drawn per label."""
    if bank < 3:
        raise UserError(f"a seed bank needs at least 3 seeds to rank, got {bank}")
    columns = []
    with plan.applied(model) as run:
        for label in labels:
            cond = None if label is None else torch.full((bank,), int(label), dtype=torch.long)
            columns.append(Candidates(model, run, plan, verifier, bank, seed, cond, cond, batch_size,
                                      device).draw(0)[1])
    return torch.stack(columns, 1)


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of a score vector (ties broken by position; scores are continuous)."""
    return torch.argsort(torch.argsort(x.double(), stable=True)).double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation: Pearson's on the ranks."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def permutation_floor(a: torch.Tensor, b: torch.Tensor, permutations: int = PERMUTATIONS,
                      seed: int = FLOOR_SEED) -> float:
    """The 95th percentile of |Spearman| between a and shuffled b: correlations below it are not resolved."""
    g = torch.Generator().manual_seed(seed)
    null = torch.tensor([abs(spearman(a, b[torch.randperm(len(b), generator=g)])) for _ in range(permutations)])
    return float(null.quantile(0.95))


def split_half(scores: torch.Tensor, splits: int = SPLITS, seed: int = FLOOR_SEED) -> float | None:
    """Mean Spearman between the seed rankings of two random halves of the columns (labels): the ranking's own
    reliability, the most a transfer can show; None with fewer than 2 columns."""
    if scores.shape[1] < 2:
        return None
    g = torch.Generator().manual_seed(seed)
    half = scores.shape[1] // 2
    values = []
    for _ in range(splits):
        order = torch.randperm(scores.shape[1], generator=g)
        values.append(spearman(scores[:, order[:half]].mean(1), scores[:, order[half:]].mean(1)))
    return sum(values) / len(values)


def transfer(calibration: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Spearman between two mean-score vectors over the same seeds, with its permutation floor."""
    return {"spearman": spearman(calibration, other), "floor": permutation_floor(calibration, other)}


@dataclass
class SeedRanking:
    """A ranked seed bank and how well its ranking transfers."""

    seed: int
    bank: int
    verifier: str
    calibration_labels: list[Any]
    order: list[int]  # bank indices, best first
    mean_scores: list[float]  # per bank index, over the calibration labels
    split_half: float | None
    heldout: dict[str, Any] | None = None  # {labels, spearman, floor}
    other_model: dict[str, Any] | None = None  # {model, spearman, floor}


def rank_seeds(score: Callable[[Sequence[Any]], torch.Tensor], calibration: Sequence[Any],
               heldout: Sequence[Any] = (), other: Callable[[Sequence[Any]], torch.Tensor] | None = None,
               seed: int = 0, verifier: str = "", other_name: str = "") -> SeedRanking:
    """Rank seeds by mean score(calibration) [bank, labels]; transfer to score(heldout) and other(calibration)."""
    cal = score(calibration)
    mean = cal.mean(1)
    out = SeedRanking(seed, len(cal), verifier, list(calibration), torch.argsort(mean, descending=True).tolist(),
                      mean.tolist(), split_half(cal))
    if heldout:
        out.heldout = {"labels": list(heldout), **transfer(mean, score(heldout).mean(1))}
    if other is not None:
        out.other_model = {"model": other_name, **transfer(mean, other(calibration).mean(1))}
    return out


def golden_seeds(model: LoadedModel, plan: SamplingPlan, bank: int, verifier: Verifier,
                 calibration: Sequence[Any], heldout: Sequence[Any] = (),
                 other: tuple[LoadedModel, SamplingPlan] | None = None, seed: int = 0, batch_size: int = 256,
                 device: str | torch.device = "cpu") -> SeedRanking:
    """rank_seeds on models: the bank's scores under `model` (and `other`, e.g. a student, on the same noises)."""
    def score(on: tuple[LoadedModel, SamplingPlan]) -> Callable[[Sequence[Any]], torch.Tensor]:
        return lambda labels: seed_scores(*on, bank, labels, verifier, seed, batch_size, device)

    return rank_seeds(score((model, plan)), calibration, heldout, None if other is None else score(other), seed,
                      verifier.name, "" if other is None else str(other[0].path))


def _labels(text: str | None, default: list[int]) -> list[int]:
    try:
        return default if text is None else [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"labels are written 0,1,2; got {text!r}") from None


def run_seeds(model_path: str | Path, out: str | Path, bank: int = 256, verifier: str = "classifier",
              settings: PlanSettings | None = None, other: str | Path | None = None, calibration: str | None = None,
              heldout: str | None = None, seed: int = 0, batch_size: int = 256,
              device: str = "cpu") -> tuple[Path, SeedRanking]:
    """`fewstep seeds`: rank a bank on a model folder, write out/seeds.json; returns its path and the ranking."""
    from fewstep.models.io import load_model
    from fewstep.search.run import model_data

    model = load_model(model_path, device)
    classes = model.info.num_classes
    cal = _labels(calibration, list(range(classes // 2)) if classes else [None])
    held = _labels(heldout, list(range(classes // 2, classes)) if classes else [])
    if any(label is not None and not 0 <= label < classes for label in cal + held):
        raise UserError(f"labels must lie in 0..{classes - 1}" if classes else "this model is unconditional: "
                        "drop --calibration and --heldout")
    checker = build_verifier(verifier, model_data(model))
    second = None
    if other is not None:
        second_model = load_model(other, device)
        second = (second_model, build_plan(second_model))
    ranking = golden_seeds(model, build_plan(model, settings), bank, checker, cal, held, second, seed, batch_size,
                           device)
    path = Path(out) / "seeds.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**asdict(ranking), "model": str(model.path), "plan": asdict(build_plan(
        model, settings).settings()), "ruler_independent": checker.ruler_independent}, indent=1))
    return path, ranking


@dataclass(frozen=True)
class GoldenSeeds:
    """Noise indices from a `fewstep seeds` ranking: sample i gets the i-th best seed of the bank, cycling."""

    path: str
    seed: int  # the noise seed of the bank
    order: list[int]  # bank indices, best first

    def indices(self, n: int) -> list[int]:
        """The noise indices of samples 0..n-1."""
        return [self.order[i % len(self.order)] for i in range(n)]

def read_golden_seeds(path: str | Path) -> GoldenSeeds:
    """The ranking in a seeds.json written by `fewstep seeds` (a one-line UserError for anything else)."""
    try:
        record = json.loads(Path(path).read_text())
        seed, order = int(record["seed"]), [int(k) for k in record["order"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"--seeds-from {path}: not a ranking written by `fewstep seeds` ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not order or sorted(order) != list(range(len(order))):
        raise UserError(f"--seeds-from {path}: its order must rank every seed 0..bank-1 of the bank once")
    return GoldenSeeds(str(path), seed, order)
