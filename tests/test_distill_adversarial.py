"""Distillation II: the latent discriminator on every backbone, ADD / Lightning / DMD2 students that improve on their
start, and the divergence guard (non-finite loss, a winning discriminator, a recall collapse) rolling back."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fewstep.cli import main
from fewstep.data.toy2d import ring_centers
from fewstep.distill import DistillContext, distill, resolve_distill_config
from fewstep.distill.adversarial import AdversarialDistillation
from fewstep.distill.discriminator import Discriminator
from fewstep.metrics.toy import mode_masses, sliced_wasserstein2
from fewstep.models.io import load_model
from fewstep.models.networks import build_network
from fewstep.train.loop import Diverged
from tests.test_distill import draw, ring_teacher, toy_distill, toy_reference  # noqa: F401 (fixtures)


def tiny_distill(teacher, out, method: str, **overrides):
    cfg = resolve_distill_config({"teacher": str(teacher), "method": method, "preset": "tiny", "device": "cpu",
                                  "steps": "1,2", **overrides})
    return distill(cfg, out)


def records(run_dir) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


@pytest.mark.parametrize("arch,shape,classes", [("unet", (1, 8, 8), 10), ("dit", (1, 8, 8), 10), ("mlp", (2,), 0)])
def test_discriminator_reads_every_backbone_and_stops_early(arch, shape, classes):
    from fewstep.core.precond import EDMPrecond
    from fewstep.models.networks import call_network

    torch.manual_seed(0)
    net = build_network(arch, "tiny", shape, classes)
    denoiser = EDMPrecond(net, call_network, num_classes=classes).requires_grad_(False)
    disc = Discriminator(denoiser, shape, classes)
    last = {"unet": "conv_out", "dit": "proj_out_2", "mlp": "out"}[arch]
    calls = []
    getattr(net, last).register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(4, *shape, requires_grad=True)
    labels = torch.arange(4) % classes if classes else None
    logits = disc(denoiser, x, torch.full((4,), 0.5), labels)
    assert logits.shape == (4,) and not calls  # the network's output layer never ran
    logits.sum().backward()
    assert x.grad.abs().sum() > 0  # the student's gradient flows through the frozen backbone
    assert all(p.grad is None for p in net.parameters())
    assert sum(p.numel() for p in disc.parameters()) < sum(p.numel() for p in net.parameters()) * 4
    assert not any(p is q for p in disc.parameters() for q in net.parameters())


@pytest.mark.parametrize("method", ["add", "lightning", "dmd2"])
def test_adversarial_methods_train_with_finite_losses(tiny_teacher, tmp_path, method):
    rounds = ["--pd-start-steps", "2"] if method == "lightning" else []
    code = main(["distill", "--teacher", str(tiny_teacher), "--method", method, "--preset", "tiny", "--steps", "1,2",
                 *rounds, "--device", "cpu", "--out", str(tmp_path)])
    assert code == 0
    stage = tmp_path / ("round-001" if method == "lightning" else "train")
    rows = [r for r in records(stage) if "event" not in r]
    other = {"add": "disc", "lightning": "disc", "dmd2": "fake"}[method]
    student = "generator" if method == "dmd2" else "student"
    assert rows and all(math.isfinite(r[f"loss_{other}"]) and math.isfinite(r[f"loss_{student}"]) for r in rows)
    info = load_model(tmp_path / "model").info
    assert info.extra["distill"]["method"] == method


def test_add_one_step_student_improves_on_its_start(ring_teacher, toy_reference, tmp_path):
    (path,) = toy_distill(ring_teacher, tmp_path, "add", steps="1", train_steps=300, lr=2e-4, log_every=50)
    start = sliced_wasserstein2(draw(ring_teacher, "euler", 1), toy_reference)  # the teacher's weights, one step
    assert sliced_wasserstein2(draw(path, "consistency", 1), toy_reference) < 0.5 * start


def test_lightning_one_step_student_improves_and_covers_every_mode(ring_teacher, toy_reference, tmp_path):
    paths = toy_distill(ring_teacher, tmp_path, "lightning", steps="1", pd_start_steps=4, train_steps=150,
                        adv_distill_weight=0.5, log_every=50)
    assert [p.name for p in paths] == ["model-1step", "model"]
    student = draw(tmp_path / "model-1step", "euler", 1)
    start = sliced_wasserstein2(draw(ring_teacher, "euler", 1), toy_reference)
    assert sliced_wasserstein2(student, toy_reference) < 0.5 * start
    masses = mode_masses(student, ring_centers(), radius=0.5)
    assert ((masses / masses.sum() - 1 / 8).abs() <= 0.3 / 8).all(), masses


def test_divergence_guard_rolls_back_on_an_injected_nan(tiny_teacher, tmp_path, monkeypatch):
    original = AdversarialDistillation.losses
    seen = []

    def nan_once_at_4(self, batch):
        out = original(self, batch)
        if batch.step == 4 and not seen:
            seen.append(1)
            out["student"] = out["student"] * float("nan")
        return out

    monkeypatch.setattr(AdversarialDistillation, "losses", nan_once_at_4)
    tiny_distill(tiny_teacher, tmp_path, "add")
    (event,) = [r for r in records(tmp_path / "train") if "event" in r]
    assert event["step"] == 4 and event["to_step"] == 3 and event["lr_scale"] == 0.5
    assert event["reason"].startswith("non-finite loss")
    assert (tmp_path / "model" / "fewstep.json").exists()


def test_a_discriminator_that_keeps_winning_rolls_back_then_stops_loudly(tiny_teacher, tmp_path, monkeypatch):
    calls = []

    def wins_after_step_3(self, losses):
        calls.append(1)
        return "the discriminator wins" if len(calls) > 4 else None

    monkeypatch.setattr(AdversarialDistillation, "diverging", wins_after_step_3)
    with pytest.raises(Diverged, match="the discriminator wins for 2 steps; 1 roll-backs spent"):
        tiny_distill(tiny_teacher, tmp_path, "add", guard_patience=2, max_rollbacks=1, train_steps=12)
    (event,) = [r for r in records(tmp_path / "train") if r.get("event") == "rollback"]
    assert event == {"step": 5, "event": "rollback", "reason": "the discriminator wins for 2 steps", "to_step": 3,
                     "lr_scale": 0.5, "reseed": 1}
    assert not (tmp_path / "model").exists()  # nothing half-trained is exported
    assert (tmp_path / "train" / "checkpoints" / "step-0000003").exists()  # the last good checkpoint is kept


def test_a_coverage_collapse_rolls_back_while_recall_rises(tiny_teacher, tmp_path, monkeypatch):
    """The issue's DMD2 run: recall kept rising while modes emptied. Coverage falling by collapse_drop rolls back."""
    values = iter([{"recall": 0.5, "coverage": 1.0}, {"recall": 0.7, "coverage": 0.6},
                   *[{"recall": 0.7, "coverage": 1.0}] * 4])
    monkeypatch.setattr(DistillContext, "collapse_monitor", lambda self, *a: lambda modules: next(values))
    tiny_distill(tiny_teacher, tmp_path, "add", train_steps=9)
    rows = [r for r in records(tmp_path / "train") if "event" in r]
    assert [r["event"] for r in rows][:3] == ["monitor", "monitor", "rollback"]
    assert rows[2]["step"] == 6 and rows[2]["to_step"] == 3
    assert rows[2]["reason"].startswith("collapse: monitored coverage 0.600 fell more than 0.2 below the run's best")
    assert (tmp_path / "model").exists()


def test_the_collapse_monitor_measures_the_student(tiny_teacher, tmp_path):
    tiny_distill(tiny_teacher, tmp_path, "dmd2", monitor_n=32)
    rows = [r for r in records(tmp_path / "train") if r.get("event") == "monitor"]
    assert len(rows) == 2 and all(0.0 <= r[k] <= 1.0 for r in rows for k in ("precision", "recall", "coverage"))


def test_coverage_sees_a_collapse_that_recall_misses():
    """On 8gaussians: samples piled on three of the eight modes keep recall of those modes' points but cover 3/8."""
    from fewstep.data import load_dataset
    from fewstep.data.toy2d import ring_centers
    from fewstep.distill.common import _vector_collapse

    data = load_dataset("8gaussians")
    measure = _vector_collapse(data, 800)
    good = measure(data.sampler(800, torch.Generator().manual_seed(5)))
    g = torch.Generator().manual_seed(6)
    piled = ring_centers()[torch.arange(800) % 3] + 0.1 * torch.randn(800, 2, generator=g)
    collapsed = measure(piled)
    assert good["coverage"] == 1.0 and collapsed["coverage"] == 3 / 8
    assert collapsed["precision"] > 0.9  # every collapsed sample is a good sample: precision cannot see it


def test_class_coverage_counts_the_classes_that_vanish():
    from fewstep.metrics.image import class_coverage

    wanted = torch.full((10,), 10.0)
    assert class_coverage(torch.arange(100) % 10, wanted) == 1.0
    assert class_coverage(torch.arange(100) % 4, wanted) == 0.4


def test_init_from_a_student_folder_fine_tunes_it(tiny_teacher, tmp_path):
    """--init PATH starts from another model's weights (e.g. adversarial post-training of a distilled student)."""
    from fewstep.core.errors import UserError

    (first,) = tiny_distill(tiny_teacher, tmp_path / "reflow", "reflow", steps="1")
    cfg = resolve_distill_config({"teacher": str(tiny_teacher), "method": "add", "preset": "tiny", "device": "cpu",
                                  "steps": "1", "init": str(first)})
    student = DistillContext(cfg, tmp_path / "add").make_student()
    start = load_model(first).denoiser.state_dict()
    assert all(torch.equal(v, start[k]) for k, v in student.state_dict().items())
    teacher = load_model(tiny_teacher).denoiser.state_dict()
    assert not all(torch.equal(v, teacher[k]) for k, v in student.state_dict().items())
    with pytest.raises(UserError, match="--init must be teacher, scratch or a model folder"):
        DistillContext(resolve_distill_config({**cfg.flat(), "init": str(tmp_path / "nope")}), tmp_path / "x").make_student()


def test_the_fake_score_starts_from_the_teacher_whatever_the_generator_starts_from(tiny_teacher, tmp_path,
                                                                                    monkeypatch):
    """DMD2's and SiD's fake score is a copy of the teacher (as in their papers), also when --init starts the
    generator from a distilled student: it must first describe the teacher's distribution, not the student's net."""
    from fewstep.distill import dmd, sid

    (first,) = tiny_distill(tiny_teacher, tmp_path / "reflow", "reflow", steps="1")
    student, teacher = load_model(first).denoiser.state_dict(), load_model(tiny_teacher).denoiser.state_dict()
    for name, module in (("dmd2", dmd), ("sid", sid)):
        built = []
        monkeypatch.setattr(module, "train_generator", lambda ctx, method, *a, **k: built.append(method) or [])
        cfg = resolve_distill_config({"teacher": str(tiny_teacher), "method": name, "preset": "tiny", "device": "cpu",
                                      "steps": "1", "init": str(first)})
        module.run(DistillContext(cfg, tmp_path / name))
        fake = built[0].modules["fake"]
        fake = fake.score if name == "dmd2" else fake
        assert all(torch.equal(v, teacher[k]) for k, v in fake.state_dict().items()), name
        assert all(torch.equal(v, student[k]) for k, v in built[0].modules["generator"].state_dict().items()), name
        assert all(p.requires_grad for p in fake.parameters()), name  # it trains
