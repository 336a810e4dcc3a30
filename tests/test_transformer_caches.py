"""fewstep's transformer caches (fbcache, errorcache, teacache) on every transformer fewstep loads, next to the peers
(diffusers' hooks, cache-dit): apply, skip, remove bit-exactly, equal the peer that implements the same algorithm."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from fewstep.accel import apply_cache
from fewstep.accel.blocks import block_stack
from fewstep.accel.errorcache import ResidualProfile, ResidualRecorder
from fewstep.accel.teacache import calibrate, fit_polynomial
from fewstep.cli import main
from fewstep.core.cond import Cond
from fewstep.core.errors import UserError
from fewstep.core.schedules import karras
from fewstep.metrics import count_flops
from fewstep.models.transformers import dit_call, flux_call, pixart_call, sd3_call
from tests.test_accel import LABELS, SHAPE, model, run

TEXT_DIM, POOLED_DIM, TOKENS = 16, 8, 5
TIMESTEPS = [900.0, 750.0, 600.0, 450.0, 300.0, 150.0]  # one trajectory: the level falls call by call


def tiny(kind: str) -> tuple[nn.Module, callable, tuple[int, ...]]:
    """A tiny random transformer of each kind fewstep loads (3 blocks), the call its pipeline makes, its latent."""
    from diffusers import (DiTTransformer2DModel, FluxTransformer2DModel, PixArtTransformer2DModel,
                           SD3Transformer2DModel)

    torch.manual_seed(0)
    if kind == "dit":
        net = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                    num_layers=3, sample_size=8, patch_size=2, num_embeds_ada_norm=10,
                                    norm_num_groups=1)
        return net.eval(), dit_call, (4, 8, 8)
    if kind == "pixart":
        net = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                       num_layers=3, cross_attention_dim=16, caption_channels=TEXT_DIM,
                                       sample_size=8, patch_size=2, norm_num_groups=1)
        return net.eval(), pixart_call, (4, 8, 8)
    if kind == "sd3":
        net = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=3,
                                    attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                                    caption_projection_dim=16, pooled_projection_dim=POOLED_DIM, pos_embed_max_size=16)
        return net.eval(), sd3_call, (4, 8, 8)
    net = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2,
                                 attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                                 pooled_projection_dim=POOLED_DIM, guidance_embeds=False, axes_dims_rope=(4, 6, 6))
    return net.eval(), flux_call, (4, 8, 8)


KINDS = ["dit", "pixart", "sd3", "flux"]


def trajectory(net: nn.Module, call, shape, timesteps=TIMESTEPS) -> torch.Tensor:
    """The network's outputs along a made-up trajectory: inputs drifting slowly as the level falls."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, *shape, generator=g)
    drift = torch.randn(2, *shape, generator=g)
    cond = Cond(text=torch.randn(2, TOKENS, TEXT_DIM, generator=g), pooled=torch.randn(2, POOLED_DIM, generator=g),
                mask=torch.ones(2, TOKENS), labels=torch.tensor([1, 4]))
    outs = []
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            outs.append(call(net, x + 0.02 * i * drift, torch.full((2,), t), cond))
    return torch.stack(outs)


def profile(net: nn.Module, call, shape, path) -> str:
    """An errorcache residual profile of the trajectory (what profile_residuals records along a sampler run)."""
    recorder = ResidualRecorder(block_stack(net, "test"))
    trajectory(net, call, shape)
    recorder.remove()
    stack = torch.stack(recorder.residuals)
    ResidualProfile("test", TIMESTEPS, recorder.levels, (stack @ stack.T).tolist(), 2, 0).save(path)
    return str(path)


@pytest.mark.parametrize("kind", KINDS)
def test_every_cache_applies_skips_and_removes_bit_exactly(kind, tmp_path):
    net, call, shape = tiny(kind)
    reference = trajectory(net, call, shape)
    specs = {"fbcache:threshold=0": True, "teacache:threshold=0": True, "fbcache:threshold=10": False,
             "teacache:threshold=10": False, f"errorcache:profile={profile(net, call, shape, tmp_path / 'p.json')},"
             "budget=0.5": False}
    full_flops = count_flops(lambda: trajectory(net, call, shape))
    for spec, exact in specs.items():
        handle = apply_cache(net, spec)
        try:
            outs = []
            flops = count_flops(lambda: outs.append(trajectory(net, call, shape)))
            out, stats = outs[0], handle.stats()
        finally:
            handle.remove()
        if exact:  # threshold 0 never skips: the cache changes nothing
            assert torch.equal(out, reference), spec
            assert stats["cached_calls"] == 0
        else:
            assert stats["cached_calls"] >= 2, spec
            assert flops < 0.85 * full_flops, spec
            assert torch.equal(out[0], reference[0]), spec  # the first call always runs in full
        assert torch.equal(trajectory(net, call, shape), reference), spec  # remove() restores the network exactly
        assert not any("forward" in m.__dict__ for m in net.modules())


def test_teacache_skips_every_call_but_the_first_at_a_large_threshold():
    net, call, shape = tiny("sd3")
    handle = apply_cache(net, "teacache:threshold=1e9")
    trajectory(net, call, shape)
    assert handle.stats() == {"full_calls": 1, "cached_calls": len(TIMESTEPS) - 1}
    trajectory(net, call, shape)  # a new trajectory (the level rose) starts with a full call again
    assert handle.stats() == {"full_calls": 2, "cached_calls": 2 * (len(TIMESTEPS) - 1)}
    handle.remove()


@pytest.fixture
def dit_folder(tmp_path) -> str:
    """A randomly initialised digits-sized DiT saved as a fewstep model."""
    from fewstep.models import ModelInfo, save_model

    save_model(tmp_path / "dit", model("dit", "small").network,
               ModelInfo(arch="dit", network_class="DiTTransformer2DModel", num_classes=10, dataset="digits",
                         kind="image", shape=list(SHAPE)))
    return str(tmp_path / "dit")


def test_teacache_calibration_fits_the_polynomial_and_accelerate_records_it(tmp_path, dit_folder):
    d = model("dit", "small")
    coefficients = calibrate(d, SHAPE, karras(6, 0.002, 80.0), "euler", n=4, labels=LABELS % 10)
    assert 2 <= len(coefficients) <= 5 and all(map(torch.isfinite, torch.tensor(coefficients)))
    spec = f"teacache:threshold=0.2,coefficients=[{','.join(map(str, coefficients))}]"
    handle = apply_cache(d, spec)
    run(d, "euler", steps=6)
    assert handle.stats()["full_calls"] >= 1
    handle.remove()
    out = tmp_path / "fast"
    assert main(["accelerate", "--model", dit_folder, "--out", str(out), "--cache",
                 "teacache:threshold=0.2,calibrate=true", "--sampler", "euler", "--steps", "6"]) == 0
    recorded = json.loads((out / "fewstep.json").read_text())["acceleration"]["cache"]
    assert recorded.startswith("teacache:threshold=0.2,coefficients=[") and "calibrate" not in recorded


def test_teacache_calibration_of_a_text_to_image_pipeline_samples_its_prompts_guided(tmp_path, capsys):
    """An SD3 pipeline folder: the fit runs the guided trajectory on the --prompts set; without prompts (a model that
    records no prompt set) it asks for them in one line."""
    from fewstep.models.tiny import save_tiny_sd3_pipeline, tiny_sd3_transformer

    folder = save_tiny_sd3_pipeline(tmp_path / "sd3", shift=3.0)
    tiny_sd3_transformer(num_layers=3).save_pretrained(folder / "transformer", safe_serialization=True)
    flags = ["accelerate", "--model", str(folder), "--cache", "teacache:threshold=0.2,calibrate=true",
             "--sampler", "euler", "--steps", "6", "--cfg-scale", "4"]
    assert main([*flags, "--out", str(tmp_path / "no-prompts")]) == 2
    assert "pass --prompts FILE" in capsys.readouterr().err and not (tmp_path / "no-prompts").exists()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat\na small dog on the tree\n")
    assert main([*flags, "--out", str(tmp_path / "fast"), "--prompts", str(prompts)]) == 0
    recorded = json.loads((tmp_path / "fast" / "fewstep.json").read_text())["acceleration"]
    assert recorded["cache"].startswith("teacache:threshold=0.2,coefficients=[") and recorded["cfg_scale"] == 4


def test_magcache_calibrates_in_its_own_mode_and_accelerate_records_the_fit(tmp_path, dit_folder):
    """The ratios are diffusers MagCache's own (each call's stack residual norm over the previous call's, token by
    token), one per network call; fitted, they make MagCache skip; `fewstep accelerate` records them."""
    from fewstep.accel.peers import magcache_ratios

    d = model("dit", "small")
    blocks = block_stack(d, "test").blocks
    inputs, outputs = [], []
    hooks = [blocks[0].module.register_forward_pre_hook(lambda m, a, k: inputs.append(a[0] if a else
                                                                                   k["hidden_states"]),
                                                        with_kwargs=True),
             blocks[-1].module.register_forward_hook(lambda m, a, out: outputs.append(out))]
    ratios = magcache_ratios(d, SHAPE, karras(6, 0.002, 80.0), "euler", n=4, labels=LABELS[:4] % 10)
    for h in hooks:
        h.remove()
    residuals = [o - i for i, o in zip(inputs, outputs)]
    expected = [1.0] + [float((r.norm(dim=-1) / (p.norm(dim=-1) + 1e-8)).mean())
                        for p, r in zip(residuals, residuals[1:])]
    np.testing.assert_allclose(ratios, expected, rtol=1e-5)
    assert len(ratios) == 6
    spec = f"peer:diffusers-magcache:threshold=1,retention_ratio=0,num_inference_steps=6,mag_ratios={ratios}"
    full = count_flops(lambda: run(d, "euler", steps=6))
    handle = apply_cache(d, spec.replace(" ", ""))
    cached = count_flops(lambda: run(d, "euler", steps=6))
    handle.remove()
    assert cached < 0.9 * full
    out = tmp_path / "fast"
    assert main(["accelerate", "--model", dit_folder, "--out", str(out), "--cache",
                 "peer:diffusers-magcache:threshold=0.1,calibrate=true", "--sampler", "euler", "--steps", "6"]) == 0
    recorded = json.loads((out / "fewstep.json").read_text())["acceleration"]["cache"]
    assert recorded.startswith("peer:diffusers-magcache:threshold=0.1,num_inference_steps=6,mag_ratios=[1,")
    assert main(["sample", "--model", str(out), "--n", "2", "--out", str(tmp_path / "x.png")]) == 0


def test_the_fitted_polynomial_predicts_held_out_samples():
    g = np.random.default_rng(0)
    x = g.uniform(0.02, 0.1, (8, 20))
    y = 30 * x ** 2 + 0.5 * x + 0.01
    coefficients = fit_polynomial(x, y + g.normal(0, 1e-4, x.shape))
    np.testing.assert_allclose(np.polyval(coefficients, x), y, atol=1e-3)
    assert len(fit_polynomial(x[:, :3], x[:, :3])) >= 2  # few points: still a line or more


@pytest.mark.parametrize("kind,threshold", [("dit", 0.2), ("pixart", 0.2), ("flux", 0.5)])
def test_fbcache_equals_diffusers_first_block_cache(kind, threshold):
    net, call, shape = tiny(kind)
    handle = apply_cache(net, f"peer:diffusers-fbcache:threshold={threshold}")
    theirs = trajectory(net, call, shape)
    handle.remove()
    handle = apply_cache(net, f"fbcache:threshold={threshold}")
    ours = trajectory(net, call, shape)
    assert handle.stats()["cached_calls"] >= 2
    handle.remove()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_diffusers_first_block_cache_is_refused_on_sd3_where_fbcache_runs():
    """SD3's last block returns no text tokens (context_pre_only); diffusers 0.42's hook subtracts from None (a
    TypeError mid-run, which took a whole bench down), so the peer is refused at apply time, in one line."""
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    net, call, shape = tiny("sd3")
    base = trajectory(net, call, shape)
    with pytest.raises(UserError, match="peer diffusers-fbcache fails on this SD3Transformer2DModel") as error:
        apply_cache(net, "peer:diffusers-fbcache:threshold=0.3")
    assert "\n" not in str(error.value) and torch.equal(trajectory(net, call, shape), base)
    apply_first_block_cache(net, FirstBlockCacheConfig(threshold=0.3))  # what the refusal saves a user from
    _set_cache_context(net, CacheContext("test"))  # what a pipeline's cache_context sets
    with pytest.raises(TypeError):
        trajectory(net, call, shape)
    net, call, shape = tiny("sd3")
    handle = apply_cache(net, "fbcache:threshold=0.3")
    trajectory(net, call, shape)
    assert handle.stats()["cached_calls"] >= 2
    handle.remove()


def test_taylorseer_on_dit_says_its_patterns_match_nothing_and_runs_with_given_identifiers():
    """diffusers' TaylorSeer matches attention by name with fullmatch('^transformer_blocks.*attn'): DiT and PixArt name
    theirs attn1/attn2, so by default it hooks nothing and would run every block (a row that skipped nothing)."""
    net, call, shape = tiny("dit")
    base = trajectory(net, call, shape)
    with pytest.raises(UserError, match="matched no module of this DiTTransformer2DModel") as error:
        apply_cache(net, "peer:diffusers-taylorseer:cache_interval=2,disable_cache_before_step=1")
    assert "\n" not in str(error.value)
    assert torch.equal(trajectory(net, call, shape), base)  # the refused peer left nothing behind
    handle = apply_cache(net, 'peer:diffusers-taylorseer:cache_interval=2,disable_cache_before_step=1,'
                              'cache_identifiers=["transformer_blocks[.].*attn1"]')
    assert (trajectory(net, call, shape) - base).abs().max() > 1e-3  # attention outputs were predicted, not run
    handle.remove()
    assert torch.equal(trajectory(net, call, shape), base)


def test_cache_dit_runs_and_its_f1b0_dbcache_is_the_first_block_cache():
    pytest.importorskip("cache_dit", reason="cache-dit is not installed (pip install 'fewstep[peers]')")
    d = model("dit", "small")
    base = run(d, steps=6).samples
    handle = apply_cache(d, "peer:cache-dit:Fn_compute_blocks=1,Bn_compute_blocks=0,residual_diff_threshold=0.1,"
                            "max_warmup_steps=1")
    theirs = run(d, steps=6).samples
    assert handle.stats()["network_calls"] == 11  # 6 Heun steps (the last one Euler), 4 samples in one batch
    handle.remove()
    assert torch.equal(run(d, steps=6).samples, base)
    again = apply_cache(d, "peer:cache-dit:Fn_compute_blocks=1,Bn_compute_blocks=0,residual_diff_threshold=0.1,"
                           "max_warmup_steps=1")  # cache-dit patches the DiT's forward once; remove() undid that too
    assert torch.equal(run(d, steps=6).samples, theirs)
    again.remove()
    handle = apply_cache(d, "fbcache:threshold=0.1")
    ours = run(d, steps=6).samples
    handle.remove()
    assert not torch.equal(theirs, base)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("warmup", [1, 2])
def test_cache_dit_on_sd3_through_its_pipeline_pattern_equals_the_first_block_cache(warmup):
    """cache-dit adapts SD3 only inside StableDiffusion3Pipeline; fewstep hands it the blocks with that pattern.
    fbcache's warmup is cache-dit's max_warmup_steps: the first calls of a trajectory run in full."""
    pytest.importorskip("cache_dit", reason="cache-dit is not installed (pip install 'fewstep[peers]')")
    net, call, shape = tiny("sd3")
    base = trajectory(net, call, shape)
    handle = apply_cache(net, "peer:cache-dit:Fn_compute_blocks=1,Bn_compute_blocks=0,residual_diff_threshold=0.5,"
                              f"max_warmup_steps={warmup}")
    theirs = trajectory(net, call, shape)
    handle.remove()
    assert torch.equal(trajectory(net, call, shape), base)
    handle = apply_cache(net, f"fbcache:threshold=0.5,warmup={warmup}")
    ours = trajectory(net, call, shape)
    stats = handle.stats()
    handle.remove()
    assert (theirs - base).abs().max() > 1e-4  # blocks were skipped
    assert stats["full_calls"] >= warmup and stats["cached_calls"] >= 1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


class Unmapped(nn.Module):
    """A transformer whose block class diffusers does not describe."""

    def __init__(self):
        super().__init__()
        self.transformer_blocks = nn.ModuleList([nn.Linear(4, 4)])


@pytest.mark.parametrize("target,spec,message", [
    (Unmapped(), "fbcache", "fbcache cannot map the blocks of Unmapped: block class Linear"),
    (Unmapped(), "peer:diffusers-fbcache", "cannot map the blocks of Unmapped"),
    (nn.Linear(2, 2), "teacache", "teacache works on transformers .* network is a Linear"),
    (None, "teacache:speed=2", "has no setting 'speed'"),
    (None, "teacache:threshold=-1", "threshold must be >= 0"),
    (None, "fbcache:warmup=0", "fbcache: warmup counts the first calls"),
    (None, "teacache:calibrate=true", "fits the coefficients once, offline"),
    (None, "peer:diffusers-magcache:calibrate=true", "calibrate=true fits once, offline: run fewstep accelerate"),
    (None, "peer:diffusers-fastercache", "fails on this DiTTransformer2DModel: FasterCache approximates the unc"),
    (None, "peer:turbo-cache", "unknown peer 'turbo-cache'"),
    (None, "peer:diffusers-fbcache:speed=2", "has no setting 'speed'"),
    ("dit-1", "peer:diffusers-fbcache", "peer diffusers-fbcache cannot be applied to this DiTTransformer2DModel: "),
])
def test_bad_input_is_one_line(target, spec, message):
    from diffusers import DiTTransformer2DModel

    if target == "dit-1":  # one block: diffusers' FirstBlockCache fails inside its apply (pop from an empty list)
        target = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                       num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=10,
                                       norm_num_groups=1)
    target = model("dit") if target is None else target
    with pytest.raises(UserError, match=message) as error:
        apply_cache(target, spec)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("spec,message", [("teacache:speed=2", "has no setting 'speed'"),
                                          ("peer:diffusers-taylorseer", "matched no module of this DiTTransformer2DModel"),
                                          ("peer:diffusers-fastercache", "FasterCache approximates the unconditional"),
                                          ("peer:diffusers-magcache:calibrate=true", "calibrate=true fits once, offline")])
def test_bad_cache_from_the_cli_exits_2(dit_folder, capsys, tmp_path, spec, message):
    assert main(["sample", "--model", dit_folder, "--cache", spec, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
