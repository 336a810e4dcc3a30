"""Why one-step DMD2 drops modes on the 24-mode 2-D mixture (issue 19, docs/distillation.md).

Each variant trains a one-step DMD2 student of the same teacher through fewstep's own training loop (run_loop: Adam,
warm-up, EMA, clipping) with one part of the method changed: the fake score or the real score swapped for its exact
counterpart (the empirical score of a fresh batch of the generator's samples; the mixture's analytic score), or the
distribution-matching term restricted to one band of noise levels. Every `--every` steps the EMA generator's samples
are scored for mode coverage against held-out points; the result is one JSON row per variant and a plot.

Usage: python benchmarks/dmd_diagnosis.py RUN [--steps 2000] [--variants a,b,...] [--plot FILE] [--results FILE]
RUN holds modes.npz and teacher/ (benchmarks/modes.sh writes both).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from fewstep.config import LoopConfig
from fewstep.data.batches import Batch, TensorSource
from fewstep.core.noise import SampleNoise
from fewstep.core.schedules import make_schedule
from fewstep.distill.dmd import DMD2, REGRESSION_STEPS, Regression
from fewstep.distill.reflow import PAIR_SEED_OFFSET
from fewstep.distill.sid import karras_sigma
from fewstep.metrics.toy import mode_coverage, mode_masses, mode_radius
from fewstep.models.io import load_model
from fewstep.samplers import generate as solve
from fewstep.train.edm import edm_sigma
from fewstep.train.loop import run_loop

SigmaDraw = Callable[[Batch], torch.Tensor]


class MixtureScore(nn.Module):
    """The exact denoiser E[x0 | x0 + sigma n] of a Gaussian mixture (centres, weights, one isotropic std)."""

    def __init__(self, centres: torch.Tensor, weights: torch.Tensor, std: float):
        super().__init__()
        self.register_buffer("c", centres.float())
        self.register_buffer("logw", weights.float().log())
        self.var = std**2

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        s2 = sigma.reshape(-1, 1, 1) ** 2
        d = x[:, None, :] - self.c[None]  # [B, K, 2]
        r = torch.softmax(self.logw - (d**2).sum(-1) / (2 * (self.var + s2[..., 0])), dim=1)
        mean_k = self.c[None] + self.var / (self.var + s2) * d
        return (r[..., None] * mean_k).sum(1)


class EmpiricalFake:
    """The exact fake score of the generator's current distribution: a fresh pool of its samples (seeded by the
    step), smoothed by a small kernel (bandwidth h), as a mixture score; used in the generator's turn in place of the
    fake network."""

    def __init__(self, generator: Callable[[int], torch.Tensor], h: float = 0.03):
        self.draw, self.h = generator, h
        self.score: MixtureScore | None = None

    def refresh(self, step: int) -> None:
        with torch.no_grad():
            pool = self.draw(step)
        self.score = MixtureScore(pool, torch.full((len(pool),), 1.0 / len(pool)), self.h)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond=None) -> tuple[torch.Tensor, None]:
        return self.score(x, sigma), None


class Diagnosed(DMD2):
    """DMD2, optionally with an exact fake score in the generator's turn, or its gradient normalised by the batch's
    mean |x - D_real| instead of each sample's own."""

    def __init__(self, *args, exact_fake: EmpiricalFake | None = None, batch_norm: bool = False, **kw):
        super().__init__(*args, **kw)
        self.exact_fake, self.batch_norm = exact_fake, batch_norm

    def normaliser(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return (x - real).abs().mean().clamp(min=1e-8) if self.batch_norm else super().normaliser(x, real)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.exact_fake is None or batch.step % self.update_every["generator"]:
            return super().losses(batch)
        self.exact_fake.refresh(batch.step)
        network_fake, self.fake = self.fake, self.exact_fake
        try:
            return super().losses(batch)
        finally:
            self.fake = network_fake


def log_uniform(lo: float, hi: float) -> SigmaDraw:
    """Noise levels log-uniform in [lo, hi]."""
    return lambda b: (math.log(lo) + b.rand() * (math.log(hi) - math.log(lo))).exp()


VARIANTS = {  # name: what differs from DMD2 without its GAN term (EDM's log-normal noise levels, 5 fake updates)
    "dmd2+gan (defaults)": dict(gan=3e-3),
    "dm term only": dict(),
    "exact fake score": dict(exact_fake=True),
    "exact real score": dict(exact_real=True),
    "sigma < 0.1": dict(sigma=(0.002, 0.1)),
    "sigma 0.1-1": dict(sigma=(0.1, 1.0)),
    "sigma 1-80": dict(sigma=(1.0, 80.0)),
    "karras ramp": dict(sigma="ramp"),
    "batch-normalised gradient": dict(batch_norm=True),
    "regression 0.25": dict(regression=0.25),
    "regression 1": dict(regression=1.0),
    "regression 1 + fake updates 1": dict(regression=1.0, fake_updates=1),
    "regression 1 + fake updates 10": dict(regression=1.0, fake_updates=10),
    "fake updates 1": dict(fake_updates=1),
    "fake updates 20": dict(fake_updates=20),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/dmd-diagnosis.jsonl"))
    p.add_argument("--plot", type=Path, default=Path("docs/img/dmd_diagnosis.png"))
    p.add_argument("--replot", action="store_true", help="only draw the plot of the rows already in --results")
    args = p.parse_args()
    if args.replot:
        return plot([json.loads(line) for line in args.results.read_text().splitlines() if line.strip()], args.plot)

    torch.set_num_threads(1)
    data = np.load(args.run / "modes.npz")
    x, centres, weights = (torch.from_numpy(data[k]).float() for k in ("x", "centres", "weights"))
    train, held_out = x[: len(x) // 2], x[len(x) // 2:][: args.n]
    teacher = load_model(args.run / "teacher").denoiser.eval().requires_grad_(False)
    exact = MixtureScore(centres, weights, 0.08)
    radius = mode_radius(centres)
    want = mode_masses(held_out, centres, radius)
    sr = teacher.sigma_range

    def sample(gen: nn.Module, n: int, seed: int) -> torch.Tensor:
        z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * sr.sigma_max
        with torch.no_grad():
            return gen(z, torch.full((n,), sr.sigma_max))

    pairs = None

    def regression(weight: float) -> Regression:
        nonlocal pairs
        if pairs is None:  # the teacher's Heun samples of 8192 noises, as fewstep distill generates them (seed 0)
            noise = SampleNoise(PAIR_SEED_OFFSET, range(8192)).randn((2,))
            pairs = noise, solve(teacher, (2,), 8192, make_schedule("karras", REGRESSION_STEPS, sr), "heun",
                                 PAIR_SEED_OFFSET, batch_size=4096, noise=noise).samples
        return Regression(*pairs, None, lambda c: c, weight)

    rows = []
    for name in args.variants.split(","):
        v = VARIANTS[name]
        generator = copy.deepcopy(teacher).train().requires_grad_(True)
        sigma = v.get("sigma")
        draw = edm_sigma if sigma is None else (lambda b: karras_sigma(b.rand(), sr)) if sigma == "ramp" \
            else log_uniform(*sigma)  # the ramp: DMD's uniform timestep, as SiD draws its noise levels
        fake = EmpiricalFake(lambda step: sample(generator, 4096, 10**6 + step)) if v.get("exact_fake") else None
        method = Diagnosed(generator, exact if v.get("exact_real") else teacher, torch.tensor([sr.sigma_max]),
                           v.get("fake_updates", 5), v.get("gan", 0.0), (2,), 0, None, dm_sigma=draw,
                           exact_fake=fake, batch_norm=v.get("batch_norm", False),
                           regression=regression(v["regression"]) if "regression" in v else None)
        curve = []

        def on_sample(step: int, modules: dict[str, nn.Module]) -> None:
            cov = mode_coverage(sample(modules["generator"], args.n, 1), held_out, centres)
            curve.append({"step": step, **cov})

        config = LoopConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, lr_warmup_steps=100, grad_clip=1.0,
                            ema_halflife_steps=200, log_every=10**9, sample_every=args.every)
        start = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            trained = run_loop(method, TensorSource(train, seed=0), config, Path(tmp), on_sample, desc=name)
        final = sample(trained["generator"], args.n, 1)
        got = mode_masses(final, centres, radius)
        row = {"variant": name, "steps": args.steps, "seconds": round(time.time() - start, 1),
               **mode_coverage(final, held_out, centres), "curve": curve,
               "mass_ratio": (got / want).tolist(), "weights": weights.tolist()}
        print(json.dumps({k: row[k] for k in ("variant", "modes_covered", "worst_mode_ratio", "off_mode",
                                              "seconds")}), flush=True)
        rows.append(row)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as f:
            f.write(json.dumps(row) + "\n")
    plot(rows, args.plot)


HIGHLIGHT = ("dm term only", "exact fake score", "sigma < 0.1", "regression 1 + fake updates 1")


def plot(rows: list[dict], path: Path) -> None:
    """Coverage and off-mode mass over training for every variant (left, middle); each mode's mass ratio against
    its true weight for a few of them (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.8))
    colours = plt.get_cmap("tab20").colors
    for i, r in enumerate(rows):
        style = dict(color=colours[i % 20], ls=("-", "--", ":")[i // 7 % 3], marker=".", label=r["variant"])
        steps = [c["step"] for c in r["curve"]] + [r["steps"]]
        ax[0].plot(steps, [c["modes_covered"] for c in r["curve"]] + [r["modes_covered"]], **style)
        ax[1].plot(steps, [c["off_mode"] for c in r["curve"]] + [r["off_mode"]], **{**style, "label": None})
        if r["variant"] in HIGHLIGHT:
            order = np.argsort(r["weights"])
            ax[2].plot(np.array(r["weights"])[order], np.array(r["mass_ratio"])[order], **{**style, "marker": "o"})
    ax[0].set(xlabel="training step", ylabel="modes covered (>= half their mass)")
    ax[1].set(xlabel="training step", ylabel="mass off every mode")
    ax[2].set(xscale="log", ylim=(-0.1, 3), xlabel="mode's true weight (the 24 modes)",
              ylabel="student mass / true mass", title="per mode: " + ", ".join(HIGHLIGHT), )
    ax[2].title.set_fontsize(8)
    ax[2].axhline(1, color="k", lw=0.5)
    ax[2].axhline(0.5, color="k", lw=0.5, ls=":")
    fig.legend(*ax[0].get_legend_handles_labels(), loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
