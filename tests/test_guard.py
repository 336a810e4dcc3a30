"""The divergence guard: roll back to a checkpoint from before the bad step, compound the lr cut, draw new batches,
refuse to keep or export non-finite weights (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewstep.cli import main
from fewstep.train.edm import EDMTraining
from fewstep.train.guard import Diverged, check_export
from fewstep.train.teacher import train_teacher
from tests.conftest import tiny_config


def events(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if '"event"' in ln]


def poison_weights_at(step: int, times: int, monkeypatch) -> dict:
    """At the batch of `step`, `times` times: the loss is finite, its gradient NaN, so the update poisons the weights."""
    original, seen = EDMTraining.losses, {"poisoned": 0, "batches": {}}

    def losses(self, batch):
        out = original(self, batch)
        seen["batches"].setdefault(batch.step, []).append(batch.x.clone())
        if batch.step == step and seen["poisoned"] < times and torch.is_grad_enabled():
            seen["poisoned"] += 1
            weight = next(self.modules["model"].parameters()).flatten()[0]
            return {"model": out["model"] + torch.sqrt(weight * 0)}  # value 0, gradient 0 * inf = NaN
        return out

    monkeypatch.setattr(EDMTraining, "losses", losses)
    return seen


def test_nan_in_the_last_update_rolls_back_then_exports_a_finite_model(tmp_path, monkeypatch):
    seen = poison_weights_at(19, 1, monkeypatch)
    model = train_teacher(tiny_config(), tmp_path)
    [event] = events(tmp_path)
    assert event["reason"].startswith("non-finite weights") and (event["step"], event["to_step"]) == (20, 10)
    assert all(torch.isfinite(t).all() for t in load_file(model / "diffusion_pytorch_model.safetensors").values())
    assert not torch.equal(seen["batches"][12][0], seen["batches"][12][1])  # the retry drew new batches


def test_repeated_blow_up_compounds_the_lr_cut_and_gives_up_in_one_line(tmp_path, monkeypatch):
    poison_weights_at(19, 99, monkeypatch)
    with pytest.raises(Diverged, match="2 roll-backs spent; nothing exported"):
        train_teacher(tiny_config(max_rollbacks=2), tmp_path)
    assert [(e["to_step"], e["lr_scale"], e["reseed"]) for e in events(tmp_path)] == [(10, 0.5, 1), (10, 0.25, 2)]
    assert not (tmp_path / "model").exists()
    kept = load_file(tmp_path / "checkpoints" / "step-0000010" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in kept.values())  # the last good checkpoint is intact


def test_resume_after_a_roll_back_is_bit_exact(tmp_path, monkeypatch):
    config = tiny_config(checkpoint_every=5)
    poison_weights_at(7, 1, monkeypatch)
    whole = train_teacher(config, tmp_path / "whole")
    poison_weights_at(7, 1, monkeypatch)
    train_teacher(config, tmp_path / "cut", stop_at=12)  # killed after a checkpoint past the roll-back
    cut = train_teacher(config, tmp_path / "cut", resume=True)
    assert [e["reseed"] for e in events(tmp_path / "cut")] == [1]
    a, b = (load_file(p / "diffusion_pytorch_model.safetensors") for p in (whole, cut))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("lr", ["1e37", "1e39"])
def test_huge_lr_ends_in_one_line_and_exports_nothing(capsys, tmp_path, lr):
    rc = main(["train", "--out", str(tmp_path), "--preset", "tiny", "--device", "cpu", "--steps", "1", "--lr", lr])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("fewstep")]
    assert rc == 1 and len(err) == 1 and "nothing exported" in err[0]
    assert not (tmp_path / "model").exists() and not list((tmp_path / "checkpoints").glob("step-*"))


def test_export_refuses_non_finite_weights_and_samples(tiny_teacher):
    from fewstep.models.io import load_model

    denoiser = load_model(tiny_teacher).denoiser
    check_export(denoiser, (1, 16, 16))
    weight = next(denoiser.parameters())
    with torch.no_grad():
        weight.mul_(1e38)  # finite weights whose samples overflow
    with pytest.raises(Diverged, match="probe sample"):
        check_export(denoiser, (1, 16, 16))
    with torch.no_grad():
        weight.fill_(float("nan"))
    with pytest.raises(Diverged, match="weights are not finite"):
        check_export(denoiser, (1, 16, 16))
