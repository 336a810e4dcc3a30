"""Classifier-free guidance: the guided denoiser's value, its one batched forward per step, and its sigma interval."""

from __future__ import annotations

import pytest
import torch

from fewstep.core.denoiser import CallableDenoiser, CountingDenoiser, as_sigma_batch
from fewstep.core.errors import UserError
from fewstep.core.precond import EDMPrecond
from fewstep.core.schedules import karras
from fewstep.models import build_network, call_network
from fewstep.samplers import SAMPLERS, CFGDenoiser, generate
from tests.test_samplers import MIXTURE

LABELS = torch.tensor([0, 1, 2, 1])
NULL = torch.full_like(LABELS, MIXTURE.num_classes)


def point(sigma: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigma
    return x, torch.full((4,), sigma)


class TwoPassCFG:
    """The unbatched reference: a conditional and an unconditional call, combined where sigma is in the interval."""

    def __init__(self, denoiser, scale: float, sigma_interval: tuple[float, float] | None = None):
        self.denoiser, self.scale, self.sigma_interval = denoiser, scale, sigma_interval or (0.0, float("inf"))

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        d_cond = self.denoiser(x, sigma, cond)
        d_uncond = self.denoiser(x, sigma, torch.full_like(cond, self.denoiser.num_classes))
        lo, hi = self.sigma_interval
        inside = ((sigma > lo) & (sigma <= hi)).reshape(-1, *[1] * (x.ndim - 1))
        return torch.where(inside, d_uncond + self.scale * (d_cond - d_uncond), d_cond)


def test_scale_one_is_conditional_and_zero_is_unconditional():
    x, sigma = point()
    torch.testing.assert_close(CFGDenoiser(MIXTURE, 1.0)(x, sigma, LABELS), MIXTURE(x, sigma, LABELS))
    torch.testing.assert_close(CFGDenoiser(MIXTURE, 0.0)(x, sigma, LABELS), MIXTURE(x, sigma, NULL))
    torch.testing.assert_close(MIXTURE(x, sigma, NULL), MIXTURE(x, sigma, None))


def test_guidance_extrapolates_from_unconditional_through_conditional():
    x, sigma = point()
    d_cond, d_uncond = MIXTURE(x, sigma, LABELS), MIXTURE(x, sigma, NULL)
    torch.testing.assert_close(CFGDenoiser(MIXTURE, 3.5)(x, sigma, LABELS), d_uncond + 3.5 * (d_cond - d_uncond))


def test_exposes_the_wrapped_denoisers_interface():
    cfg = CFGDenoiser(MIXTURE, 2.0)
    assert (cfg.sigma_range, cfg.sigma_data, cfg.num_classes) == (MIXTURE.sigma_range, 0.5, 3)
    assert torch.equal(cfg.init_noise_scale(torch.tensor(80.0)), MIXTURE.init_noise_scale(torch.tensor(80.0)))


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m"])
def test_one_batched_forward_per_evaluation(name):
    """The inner model sees one call per NFE with twice the rows; an outer counter sees the batch's rows."""
    inner = CountingDenoiser(MIXTURE)
    cfg = CFGDenoiser(inner, 2.0)
    outer = CountingDenoiser(cfg)
    SAMPLERS[name].fn(outer, point(80.0)[0], karras(6, 0.002, 80.0), LABELS)
    nfe = SAMPLERS[name].nfe(6)
    assert inner.calls == outer.calls == nfe
    assert inner.sample_evals == cfg.rows_evaluated == 2 * outer.sample_evals == 2 * 4 * nfe


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m"])
@pytest.mark.parametrize("sigma_interval", [None, (0.3, 5.0)])
def test_equals_the_two_pass_reference(name, sigma_interval):
    x, sigmas = point(80.0)[0], karras(12, 0.002, 80.0).double()
    out = SAMPLERS[name].fn(CFGDenoiser(MIXTURE, 2.5, sigma_interval), x, sigmas, LABELS)
    ref = SAMPLERS[name].fn(TwoPassCFG(MIXTURE, 2.5, sigma_interval), x, sigmas, LABELS)
    torch.testing.assert_close(out, ref)


def test_interval_guides_only_inside_it():
    """Guided rows for sigma in (0.3, 5]; outside, one conditional row each: the inner model's rows say which."""
    inner = CountingDenoiser(MIXTURE)
    cfg = CFGDenoiser(inner, 4.0, sigma_interval=(0.3, 5.0))
    sigmas = karras(12, 0.002, 80.0)
    SAMPLERS["euler"].fn(cfg, point(80.0)[0], sigmas, LABELS)
    inside = int(((sigmas[:-1] > 0.3) & (sigmas[:-1] <= 5.0)).sum())
    assert 0 < inside < 12 and inner.calls == 12
    assert inner.sample_evals == 4 * 12 + 4 * inside


def test_rows_of_one_batch_may_sit_on_both_sides_of_the_interval():
    x = point()[0]
    sigma = torch.tensor([0.1, 1.0, 4.0, 9.0])
    inner = CountingDenoiser(MIXTURE)
    out = CFGDenoiser(inner, 3.0, sigma_interval=(0.5, 5.0))(x, sigma, LABELS)
    torch.testing.assert_close(out, TwoPassCFG(MIXTURE, 3.0, (0.5, 5.0))(x, sigma, LABELS))
    assert inner.calls == 1 and inner.sample_evals == 4 + 2
    assert torch.equal(out[[0, 3]], MIXTURE(x[[0, 3]], sigma[[0, 3]], LABELS[[0, 3]]))


def test_network_denoiser_batched_equals_two_passes():
    """On a real network (a tiny class-conditional UNet behind EDM preconditioning) the batched pass changes nothing."""
    torch.manual_seed(0)
    model = EDMPrecond(build_network("unet", "tiny", (3, 8, 8), 3), call_network, num_classes=3).eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 3.0
    sigma = as_sigma_batch(3.0, x)
    with torch.no_grad():
        torch.testing.assert_close(CFGDenoiser(model, 2.0)(x, sigma, LABELS), TwoPassCFG(model, 2.0)(x, sigma, LABELS),
                                   rtol=1e-5, atol=1e-5)


def test_unconditional_sampling_passes_through_and_counts_rows():
    inner = CountingDenoiser(MIXTURE)
    cfg = CFGDenoiser(inner, 3.0)
    x, sigma = point()
    assert torch.equal(cfg(x, sigma, None), MIXTURE(x, sigma, None))
    assert inner.sample_evals == cfg.rows_evaluated == 4


def test_generate_counts_a_guided_step_as_one_nfe():
    result = generate(CFGDenoiser(MIXTURE, 2.0), [2], 4, karras(5, 0.002, 80.0), "heun", labels=LABELS)
    assert result.nfe == SAMPLERS["heun"].nfe(5)


def test_refuses_an_unconditional_model():
    with pytest.raises(UserError, match="needs a conditional model"):
        CFGDenoiser(CallableDenoiser(lambda x, sigma, cond: x), 2.0)
