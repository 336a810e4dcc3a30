"""Training-free accelerators: exact at interval 1 / threshold 0, removable, really skipping compute, reset per
sampling call, equal to the reference implementations (DeepCache's package, diffusers' FirstBlockCache)."""

from __future__ import annotations

import types

import pytest
import torch

from fewstep.accel import CACHES, AdaptiveGuidance, apply_cache, guided_denoiser, parse_spec
from fewstep.accel.errorcache import ResidualProfile, choose_reuse, profile_residuals
from fewstep.accel.adaptive_guidance import similarity
from fewstep.accel.keysteps import KeySteps, power_schedule
from fewstep.cli import main
from fewstep.core.denoiser import CountingDenoiser
from fewstep.core.errors import UserError
from fewstep.core.precond import EDMPrecond
from fewstep.core.schedules import karras
from fewstep.metrics import count_flops
from fewstep.models import ModelInfo, build_network, call_network, save_model
from fewstep.samplers import SAMPLERS, CFGDenoiser, generate
from tests.test_samplers import MIXTURE, GaussianMixture

SHAPE = (1, 8, 8)
LABELS = torch.tensor([0, 3, 7, 10])  # 10 = the null label


def model(arch: str, preset: str = "tiny") -> EDMPrecond:
    """A randomly initialised class-conditional digits-sized network behind EDM preconditioning."""
    torch.manual_seed(0)
    return EDMPrecond(build_network(arch, preset, SHAPE, 10), call_network, num_classes=10).eval()


def run(denoiser, sampler: str = "heun", steps: int = 4, n: int = 4, seed: int = 0, batch_size: int = 256):
    return generate(denoiser, SHAPE, n, karras(steps, 0.002, 80.0), sampler, seed, LABELS[:n] % 10,
                    batch_size=batch_size)


UNET_SPECS = ["deepcache:interval=3,branch=0", "deepcache:interval=2,branch=1", "deepcache:full_steps=[0,1,4]",
              "encprop:interval=3"]
DIT_SPECS = ["fbcache:threshold=0.5", "teacache:threshold=0.5"]


def arch_of_spec(spec: str) -> str:
    return "dit" if spec.startswith(("fbcache", "errorcache", "teacache")) else "unet"


EXACT_SPECS = ["deepcache:interval=1", "deepcache:interval=1,branch=1", "encprop:interval=1", "fbcache:threshold=0",
               "teacache:threshold=0", "none"]


def test_every_registered_cache_has_an_exact_setting_and_a_removal_test():
    """A new cache joins the shared checks below (as diffusers' scheduler tests do); errorcache's exactness needs a
    profile and has its own test."""
    names = {spec.split(":")[0] for spec in EXACT_SPECS}
    assert names | {"errorcache"} == set(CACHES)
    assert {spec.split(":")[0] for spec in UNET_SPECS + DIT_SPECS} | {"none", "errorcache"} == set(CACHES)


@pytest.mark.parametrize("spec", EXACT_SPECS)
@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m"])
def test_interval_one_and_threshold_zero_reproduce_the_model(spec, sampler):
    dit = arch_of_spec(spec) == "dit"
    d = model("dit" if dit else "unet", "small" if dit else "tiny")
    plain = run(d, sampler)
    handle = apply_cache(d, spec)
    out = run(d, sampler)
    assert torch.equal(out.samples, plain.samples)
    if spec != "none":
        assert handle.stats() == {"full_calls": plain.nfe, "cached_calls": 0}


@pytest.mark.parametrize("spec", UNET_SPECS + DIT_SPECS)
def test_remove_restores_the_module_exactly(spec):
    d = model(arch_of_spec(spec), "small" if arch_of_spec(spec) == "dit" else "tiny")
    before = {k: v.clone() for k, v in d.state_dict().items()}
    classes = [type(m) for m in d.modules()]
    plain = run(d)
    handle = apply_cache(d, spec)
    cached = run(d)
    assert handle.stats()["cached_calls"] > 0 and not torch.equal(cached.samples, plain.samples)
    handle.remove()
    assert [type(m) for m in d.modules()] == classes
    assert all("forward" not in m.__dict__ and not m._forward_hooks and not m._forward_pre_hooks for m in d.modules())
    assert all(torch.equal(v, before[k]) for k, v in d.state_dict().items())
    assert torch.equal(run(d).samples, plain.samples)
    apply_cache(d, spec).remove()  # and it can be applied again


@pytest.mark.parametrize("spec", ["deepcache:interval=2,branch=0", "deepcache:interval=2,branch=1",
                                  "encprop:interval=2"])
def test_a_cached_call_on_the_full_calls_input_equals_it(spec):
    """Same x and sigma twice: the cached call recombines exactly the features the full call computed."""
    d = model("unet", "small")
    x, sigma = torch.randn(4, *SHAPE) * 2, torch.full((4,), 1.5)
    with torch.no_grad():
        full = d(x, sigma, LABELS)
        handle = apply_cache(d, spec)
        first, second = d(x, sigma, LABELS), d(x, sigma, LABELS)
    assert handle.stats() == {"full_calls": 1, "cached_calls": 1}
    assert torch.equal(first, full) and torch.equal(second, full)
    handle.reset()
    assert count_flops(lambda: d(x, sigma, LABELS)) > count_flops(lambda: d(x, sigma, LABELS))


@pytest.mark.parametrize("spec", UNET_SPECS + DIT_SPECS + ["errorcache"])
def test_cached_calls_skip_compute_and_flops_add_up(spec, tmp_path):
    """FLOPs of a run = full calls x FLOPs of a full call + cached calls x FLOPs of a cached call, and fewer."""
    arch = arch_of_spec(spec)
    d = model(arch, "small" if arch == "dit" else "tiny")
    sigmas = karras(6, 0.002, 80.0)
    if spec == "errorcache":
        profile = profile_residuals(d, SHAPE, sigmas, "heun", n=4, labels=LABELS % 10)
        spec = f"errorcache:profile={profile.save(tmp_path / 'p.json')},budget=0.4"
    x = torch.randn(4, *SHAPE) * 80

    def sample() -> None:
        SAMPLERS["heun"].fn(d, x, sigmas, LABELS)

    plain = count_flops(sample)
    handle = apply_cache(d, spec)
    accelerated = count_flops(sample)
    calls = handle.stats()
    assert calls["cached_calls"] > 0 and calls["full_calls"] + calls["cached_calls"] == SAMPLERS["heun"].nfe(6)
    assert accelerated < plain
    per_full = plain / SAMPLERS["heun"].nfe(6)
    per_cached = (accelerated - calls["full_calls"] * per_full) / calls["cached_calls"]
    assert 0 <= per_cached < per_full
    handle.remove()


@pytest.mark.parametrize("spec", UNET_SPECS + DIT_SPECS)
def test_state_resets_between_sampling_calls_and_is_per_batch(spec):
    d = model(arch_of_spec(spec), "small" if arch_of_spec(spec) == "dit" else "tiny")
    handle = apply_cache(d, spec)
    first = run(d)
    run(d, seed=5, n=3)  # another batch (and shape) in between
    again = run(d)
    assert torch.equal(first.samples, again.samples)
    batched = run(d, batch_size=2)  # two batches, each its own trajectory: the same samples, row by row
    torch.testing.assert_close(batched.samples, first.samples, rtol=1e-4, atol=1e-4)
    handle.reset()
    assert handle.call_index == 0


def test_deepcache_equals_the_deepcache_package():
    """DeepCache's own helper at block granularity (cache_block_id = branch, cache_layer_id = layers per block)."""
    deepcache = pytest.importorskip("DeepCache")
    ours, ref = model("unet", "small"), model("unet", "small")
    ts = torch.linspace(1.0, -1.0, 9)
    for branch in range(len(ours.network.down_blocks)):
        pipe = types.SimpleNamespace(unet=ref.network, scheduler=types.SimpleNamespace(timesteps=ts))
        helper = deepcache.DeepCacheSDHelper(pipe)
        helper.set_params(cache_interval=3, cache_branch_id=3 * branch + ours.network.config.layers_per_block)
        helper.enable()
        handle = apply_cache(ours, f"deepcache:interval=3,branch={branch}")
        x = torch.randn(2, *SHAPE)
        with torch.no_grad():
            for t in ts:  # DeepCache's helper finds the step by t.item(): one timestep per call
                assert torch.equal(ours.network(x * (2 + t), t, class_labels=LABELS[:2]).sample,
                                   ref.network(x * (2 + t), t, class_labels=LABELS[:2]).sample)
        assert handle.stats() == {"full_calls": 3, "cached_calls": 6}
        handle.remove()
        helper.disable()


def test_fbcache_equals_diffusers_first_block_cache():
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    ours, ref = model("dit", "small"), model("dit", "small")
    apply_first_block_cache(ref.network, FirstBlockCacheConfig(threshold=0.1))
    _set_cache_context(ref.network, CacheContext("fewstep"))  # what CacheMixin.cache_context does; DiT lacks the mixin
    handle = apply_cache(ours, "fbcache:threshold=0.1")
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        for sigma in karras(12, 0.5, 5.0)[:-1]:
            s = torch.full((4,), float(sigma))
            assert torch.equal(ours(x * sigma, s, LABELS), ref(x * sigma, s, LABELS))
    assert handle.stats()["cached_calls"] > 0


def test_errorcache_profile_choice_and_exactness(tmp_path):
    d = model("dit", "small")
    sigmas = karras(4, 0.002, 80.0)
    profile = profile_residuals(d, SHAPE, sigmas, "heun", n=4, labels=LABELS % 10)
    assert len(profile.levels) == SAMPLERS["heun"].nfe(4) and profile.levels == sorted(profile.levels, reverse=True)
    path = profile.save(tmp_path / "profile.json")
    assert ResidualProfile.load(path) == profile
    plain = run(d)
    handle = apply_cache(d, f"errorcache:profile={path},budget=0")
    assert torch.equal(run(d).samples, plain.samples) and handle.stats()["cached_calls"] == 0
    handle.remove()
    handle = apply_cache(d, f"errorcache:profile={path},budget=0.3")
    run(d)
    assert handle.stats()["cached_calls"] == 2
    with pytest.raises(UserError, match="no call at noise level"):
        run(d, "euler", steps=5)
    handle.remove()


def test_choose_reuse_and_the_fitted_scale():
    """R_1 = 2 R_0 (perfectly predictable with scale 2), R_2 orthogonal to both, R_3 = R_2."""
    r = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]], dtype=torch.float64)
    profile = ResidualProfile("euler", [3.0, 2.0, 1.0, 0.5, 0.0], [3.0, 2.0, 1.0, 0.5], (r @ r.T).tolist(), 1, 1000)
    assert profile.scale(0, 1) == 2.0 and profile.error(0, 1) == 0.0 and profile.error(1, 2) == 1.0
    assert choose_reuse(profile, 0.5) == {1, 3}
    assert choose_reuse(profile, 0.0) == frozenset()


def test_keysteps_schedules():
    assert [KeySteps(interval=3).is_full(i) for i in range(7)] == [True, False, False, True, False, False, True]
    assert [KeySteps(full_steps=(0, 1, 4)).is_full(i) for i in range(6)] == [True, True, False, False, True, False]
    calls = power_schedule(18, 6, 0, 1.4)
    assert len(calls) == 6 and calls[0] == 0 and calls[-1] < 18 and list(calls) == sorted(set(calls))
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps[0] < gaps[-1]  # dense at the center (call 0), sparse away from it
    assert KeySteps(interval=3, power=1.4, nfe=18).full_step_set() == calls


def test_adaptive_guidance_saves_rows_and_equals_cfg_above_one():
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    labels, sigmas = torch.tensor([0, 1, 2, 0, 1, 2]), karras(10, 0.002, 80.0).double()
    cfg = CFGDenoiser(MIXTURE, 3.0)
    reference = SAMPLERS["dpmpp_2m"].fn(cfg, x, sigmas, labels)
    never = AdaptiveGuidance(MIXTURE, 3.0, threshold=1.5)
    assert torch.equal(SAMPLERS["dpmpp_2m"].fn(never, x, sigmas, labels), reference)
    assert never.rows_evaluated == cfg.rows_evaluated == 2 * 6 * 10

    inner = CountingDenoiser(MIXTURE)
    adaptive = AdaptiveGuidance(inner, 3.0, threshold=0.99)
    out = SAMPLERS["dpmpp_2m"].fn(adaptive, x, sigmas, labels)
    stats = adaptive.stats()
    assert stats["rows_evaluated"] == inner.sample_evals < cfg.rows_evaluated
    assert stats["rows_evaluated"] + stats["uncond_rows_skipped"] == cfg.rows_evaluated
    assert stats["uncond_rows_skipped"] > 0 and (out - reference).abs().max() < 0.5
    again = SAMPLERS["dpmpp_2m"].fn(adaptive, x, sigmas, labels)  # a new trajectory: every sample guided again
    assert torch.equal(again, out) and adaptive.stats()["uncond_rows_skipped"] == 2 * stats["uncond_rows_skipped"]


@pytest.mark.parametrize("space", ["denoised", "eps"])
def test_adaptive_guidance_above_one_is_cfg_in_either_space(space):
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    labels, sigmas = torch.tensor([0, 1, 2, 0, 1, 2]), karras(10, 0.002, 80.0).double()
    never = AdaptiveGuidance(MIXTURE, 3.0, threshold=1.0001, space=space)
    reference = SAMPLERS["heun"].fn(CFGDenoiser(MIXTURE, 3.0), x, sigmas, labels)
    assert torch.equal(SAMPLERS["heun"].fn(never, x, sigmas, labels), reference)
    assert never.stats() == {"rows_evaluated": 2 * 6 * 19, "uncond_rows_skipped": 0}


class StopRecorder:
    """A denoiser passed through to an AdaptiveGuidance, recording how many rows are still guided after each call."""

    def __init__(self, guidance: AdaptiveGuidance):
        self.inner, self.still_guided = guidance, []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __call__(self, x, sigma, cond=None):
        out = self.inner(x, sigma, cond)
        self.still_guided.append(int(self.inner.active.sum()))
        return out


def test_the_denoised_criterion_guides_through_the_noisy_start_where_eps_stops_at_once():
    """Three classes with means 2 e_k in 8-D, sigma_max = 80: cos(eps_cond, eps_cfg) > 0.999 at the first call, so
    the paper's criterion drops guidance there (nearly the unguided result); cos(D_cond, D_cfg) = 7 / sqrt(57) = 0.93
    at the noisy start and rises to 1 as sigma falls, so every sample is guided early and stops later."""
    mixture = GaussianMixture((2 * torch.eye(3, 8)).tolist(), [0.3] * 3, [1 / 3] * 3)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    labels, sigmas = torch.tensor([0, 1, 2, 0, 1, 2]), karras(10, 0.002, 80.0).double()
    d_cond, d_uncond = mixture(x, sigmas[:1].expand(6), labels), mixture(x, sigmas[:1].expand(6), None)
    d_cfg = d_uncond + 3.0 * (d_cond - d_uncond)
    assert (similarity(x, d_cond, d_cfg, "eps") > 0.999).all()
    assert torch.allclose(similarity(x, d_cond, d_cfg, "denoised"), torch.tensor(7 / 57**0.5).double(), atol=3e-3)

    unguided = SAMPLERS["heun"].fn(mixture, x, sigmas, labels)
    runs = {}
    for space in ("eps", "denoised"):
        inner = CountingDenoiser(mixture)
        recorder = StopRecorder(AdaptiveGuidance(inner, 3.0, threshold=0.995, space=space))
        runs[space] = SAMPLERS["heun"].fn(recorder, x, sigmas, labels), recorder.still_guided
        stats = recorder.inner.stats()
        assert stats["rows_evaluated"] == inner.sample_evals
        assert stats["rows_evaluated"] + stats["uncond_rows_skipped"] == 2 * 6 * 19
    assert runs["eps"][1][0] == 0 and (runs["eps"][0] - unguided).abs().max() < 0.01  # guided at one call only
    assert runs["denoised"][1][:9] == [6] * 9 and runs["denoised"][1][-1] == 0


def test_adaptive_guidance_keeps_the_cfg_interval():
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80
    labels, sigmas = torch.tensor([0, 1, 2, 1]), karras(10, 0.002, 80.0).double()
    cfg = CFGDenoiser(MIXTURE, 2.0, sigma_interval=(0.3, 5.0))
    never = AdaptiveGuidance(MIXTURE, 2.0, sigma_interval=(0.3, 5.0), threshold=2.0)
    assert torch.equal(SAMPLERS["euler"].fn(never, x, sigmas, labels), SAMPLERS["euler"].fn(cfg, x, sigmas, labels))
    assert never.rows_evaluated == cfg.rows_evaluated < 2 * 4 * 10


def test_guided_denoiser_builds_each_kind():
    assert guided_denoiser(MIXTURE) is MIXTURE
    assert type(guided_denoiser(MIXTURE, 2.0)) is CFGDenoiser
    g = guided_denoiser(MIXTURE, 2.0, (0.1, 5.0), "adaptive:threshold=0.95")
    assert isinstance(g, AdaptiveGuidance) and g.threshold == 0.95 and g.sigma_interval == (0.1, 5.0)
    assert g.space == "denoised" and guided_denoiser(MIXTURE, 2.0, None, "adaptive:space=eps").space == "eps"


@pytest.mark.parametrize("target,spec,message", [
    ("unet", "deepcache:interval=0", "interval must be at least 1"),
    ("unet", "deepcache:interval=x", "setting 'interval' expects int"),
    ("unet", "deepcache:branch=5", "branch must lie in 0..1"),
    ("unet", "deepcache:full_steps=[1,2]", "starting at 0"),
    ("unet", "deepcache:speed=3", "has no setting 'speed'"),
    ("unet", "deepcache:interval", "write NAME:KEY=VALUE"),
    ("unet", "turbo", "unknown cache 'turbo'"),
    ("unet", "fbcache", "works on transformers .*; this model.s network is a UNet2DModel"),
    ("dit", "deepcache", "works on a diffusers UNet2DModel"),
    ("dit", "errorcache", "needs a residual profile"),
    ("dit", "errorcache:profile=missing.json", "does not exist"),
])
def test_user_mistakes_are_one_line_errors(target, spec, message):
    with pytest.raises(UserError, match=message):
        apply_cache(model(target), spec)


def test_guidance_mistakes():
    with pytest.raises(UserError, match="give it a scale"):
        guided_denoiser(MIXTURE, 1.0, None, "adaptive")
    with pytest.raises(UserError, match="unknown guidance"):
        guided_denoiser(MIXTURE, 2.0, None, "autoguidance")
    with pytest.raises(UserError, match="space must be one of denoised, eps, got 'x0'"):
        guided_denoiser(MIXTURE, 2.0, None, "adaptive:space=x0")
    with pytest.raises(UserError, match="needs 0 <= LO < HI"):
        guided_denoiser(MIXTURE, 2.0, (5.0, 1.0))


def test_a_network_is_accelerated_once_at_a_time():
    d = model("unet")
    handle = apply_cache(d, "deepcache")
    with pytest.raises(UserError, match="already accelerated"):
        apply_cache(d, "encprop")
    handle.remove()


def test_parse_spec_and_registry():
    assert parse_spec("deepcache:interval=3,full_steps=[0,2,5],branch=1") == (
        "deepcache", {"interval": "3", "full_steps": "[0,2,5]", "branch": "1"})
    assert parse_spec("none") == ("none", {})
    assert {"none", "deepcache", "encprop", "fbcache", "errorcache"} <= set(CACHES)
    assert all(isinstance(a.summary, str) and a.summary for a in CACHES.values())


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory) -> str:
    """A randomly initialised digits-sized U-Net saved as a fewstep model (no training needed for wiring)."""
    path = tmp_path_factory.mktemp("unet")
    net = model("unet").network
    save_model(path, net, ModelInfo(arch="unet", network_class="UNet2DModel", num_classes=10, dataset="digits",
                                    kind="image", shape=list(SHAPE)))
    return str(path)


def test_sample_model_and_cli_take_cache_and_guidance(unet_folder, tmp_path, capsys):
    from fewstep.plan import PlanSettings
    from fewstep.sample import sample_model

    plain = sample_model(unet_folder, 4, PlanSettings(steps=3, cfg_scale=2.0), cycle_classes=True)
    same = sample_model(unet_folder, 4, PlanSettings(steps=3, cfg_scale=2.0, cache="deepcache:interval=1",
                                                        guidance="adaptive:threshold=2"), cycle_classes=True)
    assert torch.equal(plain.samples, same.samples)
    cached = sample_model(unet_folder, 4, PlanSettings(steps=3, cache="deepcache:interval=3"), cycle_classes=True)
    assert cached.samples.shape == (4, *SHAPE)
    assert main(["sample", "--model", unet_folder, "--n", "4", "--steps", "2", "--classes", "--cfg-scale", "2",
                 "--guidance", "adaptive:threshold=0.9", "--cache", "encprop:interval=2",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").exists()
    assert main(["sample", "--model", unet_folder, "--cache", "deepcache:speed=2", "--out", "x.png"]) == 2
    assert "has no setting 'speed'" in capsys.readouterr().err


def test_eval_records_the_accelerator_and_samples_the_reference_uncached(unet_folder, monkeypatch):
    import fewstep.bench.evaluate as evaluate

    def reference(teacher, n, *args, **kwargs):
        assert all("forward" not in m.__dict__ for m in teacher.network.modules()), "reference sampled with a cache"
        return torch.zeros(n, *SHAPE)

    monkeypatch.setattr(evaluate, "converged_samples", reference)
    monkeypatch.setattr(evaluate, "evaluate_samples", lambda data, samples, labels, ref: {"fd": 0.0, "fd_floor": 0.0})
    settings = evaluate.EvalSettings(sampler="heun", steps=3, n=8, timing_batch=4, cfg_scale=2.0,
                                     cache="deepcache:interval=2", guidance="adaptive:threshold=0.5")
    row = evaluate.evaluate_model(unet_folder, settings)
    assert row["cache"] == "deepcache:interval=2" and row["guidance"] == "adaptive:threshold=0.5"
    assert row["cache_stats"] == {"full_calls": 3, "cached_calls": 2}  # 5 calls of one batch of 8
    assert row["rows_evaluated"] + row["guidance_stats"]["uncond_rows_skipped"] == 2 * 8 * 5
    plain = evaluate.evaluate_model(unet_folder, evaluate.EvalSettings(sampler="heun", steps=3, n=8, timing_batch=4))
    assert plain["cache_stats"] is None and row["flops_per_sample"] < 2 * plain["flops_per_sample"]
