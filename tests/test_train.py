"""The training loop: bit-exact resume, atomic checkpoints, the run directory, the divergence guard."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from fewstep.core.errors import UserError
from fewstep.train import checkpoint as ckpt_module
from fewstep.train import loop as loop_module
from fewstep.train.checkpoint import latest_checkpoint
from fewstep.train.edm import EDMTraining
from fewstep.train.teacher import resolve_train_config, train_teacher
from tests.conftest import tiny_config


def final_state(run_dir) -> dict[str, torch.Tensor]:
    """Weights, EMA weights and optimiser tensors of a run's final checkpoint."""
    path = latest_checkpoint(run_dir / "checkpoints")
    return {f"{p.stem}/{k}": v for p in sorted(path.glob("*.safetensors")) for k, v in load_file(p).items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    train_teacher(tiny_config(), out)
    return out


def test_run_directory_layout(uninterrupted):
    out = uninterrupted
    assert (out / "config.toml").exists() and (out / "loss.png").exists() and (out / "samples" / "final.png").exists()
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20] and all(r["loss_model"] > 0 for r in rows)
    info = json.loads((out / "model" / "fewstep.json").read_text())
    assert info["parameterization"] == "edm" and info["num_classes"] == 10 and info["shape"] == [1, 8, 8]
    assert (out / "model" / "diffusion_pytorch_model.safetensors").exists()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pt"))


def test_killed_run_resumes_bit_exactly(uninterrupted, tmp_path):
    train_teacher(tiny_config(), tmp_path, stop_at=13)  # killed after step 13: the last checkpoint is step 10
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-0000010"
    cfg = resolve_train_config({}, out=tmp_path, resume=True)
    train_teacher(cfg, tmp_path, resume=True)
    assert_same(final_state(uninterrupted), final_state(tmp_path))
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]


def test_ctrl_c_saves_and_resumes_bit_exactly(uninterrupted, tmp_path, monkeypatch):
    original = EDMTraining.losses

    def interrupt_at_7(self, batch):
        if batch.step == 7:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(EDMTraining, "losses", interrupt_at_7)
    with pytest.raises(loop_module.TrainingInterrupted, match="step 7"):
        train_teacher(tiny_config(), tmp_path)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-0000007"
    monkeypatch.setattr(EDMTraining, "losses", original)
    train_teacher(resolve_train_config({}, out=tmp_path, resume=True), tmp_path, resume=True)
    assert_same(final_state(uninterrupted), final_state(tmp_path))


def test_crash_while_saving_keeps_previous_checkpoint(uninterrupted, tmp_path, monkeypatch):
    real_save = ckpt_module.save_file
    calls = {"n": 0}

    def crash_on_second_checkpoint(tensors, path):
        calls["n"] += 1
        real_save(tensors, path)
        if calls["n"] == 5:  # the first file of the step-20 checkpoint is written, then the process "dies"
            raise SystemExit("killed while saving")

    monkeypatch.setattr(ckpt_module, "save_file", crash_on_second_checkpoint)
    with pytest.raises(SystemExit):
        train_teacher(tiny_config(), tmp_path)
    monkeypatch.setattr(ckpt_module, "save_file", real_save)
    latest = latest_checkpoint(tmp_path / "checkpoints")
    assert latest.name == "step-0000010" and (latest / "model.safetensors").exists()
    train_teacher(resolve_train_config({}, out=tmp_path, resume=True), tmp_path, resume=True)
    assert_same(final_state(uninterrupted), final_state(tmp_path))
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_existing_run_needs_resume_and_same_config(uninterrupted):
    with pytest.raises(UserError, match="--resume"):
        train_teacher(tiny_config(), uninterrupted)
    with pytest.raises(UserError, match="cannot change lr"):
        resolve_train_config({"lr": 0.5}, out=uninterrupted, resume=True)
    assert resolve_train_config({"steps": 40}, out=uninterrupted, resume=True).steps == 40


def test_divergence_guard_rolls_back_once_then_finishes(tmp_path, monkeypatch):
    original = EDMTraining.losses
    seen = {"nan": 0}

    def nan_once_at_15(self, batch):
        out = original(self, batch)
        if batch.step == 15 and seen["nan"] == 0:
            seen["nan"] += 1
            return {"model": out["model"] * float("nan")}
        return out

    monkeypatch.setattr(EDMTraining, "losses", nan_once_at_15)
    train_teacher(tiny_config(), tmp_path)
    events = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines() if "event" in ln]
    assert len(events) == 1 and events[0]["reason"].startswith("non-finite loss")
    assert {k: v for k, v in events[0].items() if k != "reason"} == {"step": 15, "event": "rollback", "to_step": 10,
                                                                     "lr_scale": 0.5, "reseed": 1}
    state = json.loads((latest_checkpoint(tmp_path / "checkpoints") / "state.json").read_text())
    assert state["step"] == 20 and state["lr_scale"] == 0.5


def test_divergence_guard_gives_up_loudly(tmp_path, monkeypatch):
    original = EDMTraining.losses
    monkeypatch.setattr(EDMTraining, "losses", lambda self, b: {"model": original(self, b)["model"] * float("nan")})
    with pytest.raises(loop_module.Diverged, match="step 0: non-finite loss"):
        train_teacher(tiny_config(), tmp_path)


@pytest.mark.parametrize("arch,dataset", [("dit", "digits"), ("mlp", "moons")])
def test_other_backbones_train_and_lower_the_loss(tmp_path, arch, dataset):
    cfg = tiny_config(arch=arch, dataset=dataset, steps=60, log_every=10, lr=3e-3)
    train_teacher(cfg, tmp_path)
    losses = [json.loads(ln)["loss_model"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-2:]) < sum(losses[:2])


def test_cosine_decay_warms_up_then_falls_to_a_tenth(tmp_path):
    cfg = tiny_config(arch="mlp", dataset="moons", steps=40, log_every=1, lr=2e-3, lr_warmup_steps=10,
                      lr_decay="cosine")
    train_teacher(cfg, tmp_path)
    lr = [json.loads(ln)["lr"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lr) == 40 and lr[0] == pytest.approx(2e-4)  # warm-up: (step + 1) / 10 of the rate
    # half a cosine over the whole run (times the warm-up): from lr at step 0 to 0.1 x lr at the last step
    assert lr[9] == pytest.approx(2e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi * 9 / 39)))) == max(lr)
    assert lr[-1] == pytest.approx(2e-4)
    after = lr[lr.index(max(lr)):]
    assert all(a >= b for a, b in zip(after, after[1:]))  # falls monotonically after the warm-up
