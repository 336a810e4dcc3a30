"""Distillation I: progressive, consistency and reflow students beat the teacher's samplers at equal NFE, resume
bit-exactly, work with every backbone and a user's diffusers teacher, and round-trip through diffusers."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from fewstep.cli import main
from fewstep.core.errors import UserError
from fewstep.core.schedules import make_schedule
from fewstep.data import load_dataset
from fewstep.distill import METHODS, distill, resolve_distill_config
from fewstep.metrics.agreement import rmse
from fewstep.metrics.toy import fresh_samples, sliced_wasserstein2
from fewstep.models.io import load_model
from fewstep.samplers import generate
from fewstep.train.teacher import resolve_train_config, train_teacher
from tests.test_train import assert_same, final_state

N = 2000


@pytest.fixture(scope="module")
def ring_teacher(tmp_path_factory):
    """An 8-Gaussians teacher (tiny MLP, 400 steps): good at 18 Heun steps, poor at 1-2 Euler steps."""
    out = tmp_path_factory.mktemp("toy-teacher")
    train_teacher(resolve_train_config({"dataset": "8gaussians", "preset": "tiny", "device": "cpu", "steps": 400,
                                        "batch_size": 256, "lr_warmup_steps": 20, "ema_halflife_steps": 40,
                                        "checkpoint_every": 400, "log_every": 50}), out)
    return out


@pytest.fixture(scope="module")
def toy_reference():
    return fresh_samples(load_dataset("8gaussians"), N, seed=123)


def toy_distill(teacher, out, method: str, **overrides):
    cfg = resolve_distill_config({"teacher": str(teacher), "method": method, "preset": "tiny", "device": "cpu",
                                  "steps": "1,2", "batch_size": 256, "lr": 1e-3, "log_every": 10, **overrides})
    return distill(cfg, out)


def option_names(method: str) -> set[str]:
    """The names of a registered method's options."""
    return {f.name for f in dataclasses.fields(METHODS[method].options)}


def draw(model_dir, sampler: str, steps: int, schedule: str = "karras_trailing", seed: int = 0) -> torch.Tensor:
    model = load_model(model_dir)
    sigmas = make_schedule(schedule, steps, model.denoiser.sigma_range)
    return generate(model.denoiser, model.info.shape, N, sigmas, sampler, seed).samples


def losses(run_dir) -> list[float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r["loss_student"] for r in rows if "loss_student" in r]


def best_teacher_sw2(teacher, steps: int, reference) -> float:
    """The teacher's best training-free result at `steps` NFE: DDIM or DPM++(2M), either schedule."""
    return min(sliced_wasserstein2(draw(teacher, sampler, steps, schedule), reference)
               for sampler in ("euler", "dpmpp_2m") for schedule in ("karras", "karras_trailing"))


def test_progressive_student_beats_ddim_at_equal_steps(ring_teacher, toy_reference, tmp_path):
    paths = toy_distill(ring_teacher, tmp_path, "progressive", pd_start_steps=4, train_steps=150)
    assert [p.name for p in paths] == ["model-2step", "model-1step", "model"]
    for k in (1, 2):
        student = sliced_wasserstein2(draw(tmp_path / f"model-{k}step", "euler", k), toy_reference)
        assert student < 0.6 * best_teacher_sw2(ring_teacher, k, toy_reference), k
    info = load_model(tmp_path / "model-2step").info
    assert info.sampler["name"] == "euler" and len(info.sampler["sigmas"]) == 2
    assert info.teacher == str(ring_teacher.resolve() / "model") and info.extra["distill"]["method"] == "progressive"
    for round_dir in ("round-004", "round-002", "round-001"):
        curve = losses(tmp_path / round_dir)
        assert curve[-1] < curve[0], round_dir


def test_consistency_student_lands_on_the_teachers_ode_end_point(ring_teacher, toy_reference, tmp_path):
    (path,) = toy_distill(ring_teacher, tmp_path, "consistency", train_steps=300)
    end_point = draw(ring_teacher, "heun", 32, "karras")  # the teacher's converged ODE solution from the same noise
    student = draw(path, "consistency", 1)
    assert rmse(student, end_point) < 0.5 * rmse(draw(ring_teacher, "euler", 1), end_point)
    assert sliced_wasserstein2(student, toy_reference) < 0.6 * best_teacher_sw2(ring_teacher, 1, toy_reference)
    assert load_model(path).info.consistency == {"sigma_min": 0.002, "scale": 10.0}
    curve = losses(tmp_path / "train")
    assert curve[-1] < curve[0]


def test_reflow_student_is_straight_enough_for_one_step(ring_teacher, toy_reference, tmp_path):
    (path,) = toy_distill(ring_teacher, tmp_path, "reflow", train_steps=300, reflow_pairs=4096,
                          reflow_solver_steps=12)
    one_step = sliced_wasserstein2(draw(path, "euler", 1), toy_reference)
    assert one_step < 0.6 * best_teacher_sw2(ring_teacher, 1, toy_reference)
    assert load_model(path).info.extra["distill"]["distill_seconds"] > 0  # pair generation + training
    curve = losses(tmp_path / "train")
    assert curve[-1] < curve[0]


@pytest.mark.parametrize("method", list(METHODS))
def test_killed_distillation_resumes_bit_exactly(tiny_teacher, tmp_path, method):
    def cfg():
        return resolve_distill_config({"teacher": str(tiny_teacher), "method": method, "preset": "tiny",
                                       "device": "cpu", "steps": "1"})

    distill(cfg(), tmp_path / "full")
    distill(cfg(), tmp_path / "cut", stop_at=4)  # killed after step 4: the last checkpoint is step 3
    with pytest.raises(UserError, match="--resume"):
        distill(cfg(), tmp_path / "cut")
    distill(cfg(), tmp_path / "cut", resume=True)
    stage = "round-001" if method in ("progressive", "lightning") else "train"
    full, cut = final_state(tmp_path / "full" / stage), final_state(tmp_path / "cut" / stage)
    assert_same(full, cut)
    if method == "consistency":  # the target network is part of the state
        assert any(k.startswith("target-state") for k in full)


def test_progressive_student_runs_in_diffusers(tiny_teacher, tmp_path):
    """UNet2DModel + EDMEulerScheduler on the student's Karras ramp reproduce fewstep's 2-step samples."""
    from diffusers import EDMEulerScheduler, UNet2DModel

    from fewstep.sample import sample_model

    toy = resolve_distill_config({"teacher": str(tiny_teacher), "method": "progressive", "preset": "tiny",
                                  "device": "cpu", "steps": "2", "pd_start_steps": 2})
    (path, _) = distill(toy, tmp_path)
    info = load_model(path).info
    unet = UNet2DModel.from_pretrained(path, use_safetensors=True)
    sched = EDMEulerScheduler.from_pretrained(path)
    sched.set_timesteps(sigmas=torch.linspace(0, 1, 3)[:2])  # diffusers takes the Karras ramp, not the sigmas
    assert torch.allclose(sched.sigmas[:-1].float(), torch.tensor(info.sampler["sigmas"]), rtol=1e-5)
    labels = torch.arange(4) % 10
    ours = sample_model(path, 4, seed=0, cond=labels)
    from fewstep.samplers import initial_latents

    x = initial_latents(load_model(path).denoiser, 0, range(4), info.shape, sched.sigmas[0])
    with torch.no_grad():
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(x, t), t, class_labels=labels).sample
            x = sched.step(out, t, x).prev_sample
    assert ours.nfe == 2 and (ours.samples - x).abs().max() < 1e-4


def test_dit_teacher_distills(tmp_path):
    train_teacher(resolve_train_config({"dataset": "digits", "preset": "tiny", "arch": "dit", "device": "cpu",
                                        "steps": 4}), tmp_path / "dit")
    cfg = resolve_distill_config({"teacher": str(tmp_path / "dit"), "method": "consistency", "preset": "tiny",
                                  "device": "cpu", "train_steps": 3})
    (path,) = distill(cfg, tmp_path / "cd")
    model = load_model(path)
    assert model.info.arch == "dit"
    assert torch.isfinite(draw(path, "consistency", 2)[:8]).all()


def test_users_diffusers_teacher_distills_into_a_diffusers_student(tmp_path):
    from diffusers import UNet2DModel

    from tests.test_diffusers_adapter import save_pipeline

    save_pipeline(tmp_path / "user", layout="pipeline")
    cfg = resolve_distill_config({"teacher": str(tmp_path / "user"), "method": "reflow", "dataset": "shapes",
                                  "preset": "tiny", "device": "cpu", "train_steps": 3, "steps": "1,2"})
    (path,) = distill(cfg, tmp_path / "rf")
    student = load_model(path)
    assert student.info.parameterization == "epsilon" and student.info.dataset == "shapes"
    assert (path / "model_index.json").exists() and UNet2DModel.from_pretrained(path / "unet", use_safetensors=True)
    samples = draw(path, "euler", 2)[:4]
    assert samples.shape == (4, 3, 8, 8) and torch.isfinite(samples).all()


def test_smaller_student_preset_and_distances(tiny_teacher, tmp_path):
    small = resolve_distill_config({"teacher": str(tiny_teacher), "method": "consistency", "preset": "tiny",
                                    "device": "cpu", "train_steps": 2, "student_preset": "tiny",
                                    "distance": "feature", "cfg_scale": 2.0})
    (path,) = distill(small, tmp_path / "a")
    teacher, student = load_model(tiny_teacher), load_model(path)
    assert student.info.extra["distill"]["student_preset"] == "tiny"
    assert not torch.equal(next(student.network.parameters()), next(teacher.network.parameters()))
    huber = resolve_distill_config({"teacher": str(tiny_teacher), "method": "consistency", "preset": "tiny",
                                    "device": "cpu", "train_steps": 2, "distance": "huber"})
    distill(huber, tmp_path / "b")
    assert all(torch.isfinite(torch.tensor(losses(tmp_path / d / "train"))).all() for d in ("a", "b"))


def test_cli_distill_then_eval_uses_the_students_sampler(capsys, tiny_teacher, tmp_path):
    out = tmp_path / "cd"
    code = main(["distill", "--teacher", str(tiny_teacher), "--method", "consistency", "--steps", "1,2",
                 "--out", str(out), "--preset", "tiny", "--device", "cpu"])
    assert code == 0 and "student saved to" in capsys.readouterr().out
    assert main(["eval", "--model", str(out), "--n", "20", "--no-agreement", "--json",
                 "--results", str(tmp_path / "r.jsonl")]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (row["sampler"], row["nfe"], row["method"], row["schedule"]) == ("consistency", 1, "consistency",
                                                                             "karras_trailing")


@pytest.mark.parametrize("argv, message", [
    (["--method", "distill-all"], "unknown method"),
    (["--steps", "two"], "step counts"),
    (["--method", "progressive", "--steps", "3", "--pd-start-steps", "8"], "not reachable"),
    (["--distance", "lpips"], "unknown --distance"),
    (["--cfg-scale", "2", "--solver", "rk4"], "--solver"),
    (["--method", "dmd2", "--cd-grid", "8"], "cd_grid is an option of consistency, not of method dmd2"),
])
def test_distill_mistakes_exit_2_with_one_line(capsys, tiny_teacher, tmp_path, argv, message):
    code = main(["distill", "--teacher", str(tiny_teacher), "--out", str(tmp_path / "x"), "--preset", "tiny",
                 "--device", "cpu", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_unconditional_teacher_refuses_guidance(ring_teacher, tmp_path):
    with pytest.raises(UserError, match="class-conditional"):
        toy_distill(ring_teacher, tmp_path, "consistency", cfg_scale=3.0)


def test_dmd2_one_step_student_covers_every_mode_and_beats_its_start(ring_teacher, toy_reference, tmp_path):
    """DMD2 from the teacher's weights: the one-step generator improves on itself at step 0 (the teacher's D at
    sigma_max), splits its on-mode mass 12.5 % +- 30 % per mode over the ring's 8 modes (the true split), and puts
    as much mass on the modes as the tiny teacher's converged samples do. Data-free DMD2 (no GAN term): on this
    2-D set the GAN's heads on a tiny MLP's features make the split less even (measured: 51 % on-mode at 3e-3)."""
    from fewstep.data.toy2d import ring_centers
    from fewstep.metrics.toy import mode_masses

    (path,) = toy_distill(ring_teacher, tmp_path, "dmd2", steps="1", train_steps=600, lr=2e-4, ema_halflife_steps=50,
                          dmd_gan_weight=0.0)
    student = draw(path, "consistency", 1)
    start = draw(ring_teacher, "euler", 1)  # the initial generator: the teacher's one-step output
    assert sliced_wasserstein2(student, toy_reference) < 0.4 * sliced_wasserstein2(start, toy_reference)
    masses = mode_masses(student, ring_centers(), radius=0.5)
    assert ((masses / masses.sum() - 1 / 8).abs() <= 0.3 / 8).all(), masses
    teacher = mode_masses(draw(ring_teacher, "heun", 18, "karras"), ring_centers(), radius=0.5)
    assert masses.sum() > 0.8 * teacher.sum()
    curve = [json.loads(ln) for ln in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss_generator"]) and math.isfinite(r["loss_fake"]) for r in curve)


def test_dmd2_regression_pairs_come_from_the_teacher_and_are_reused(ring_teacher, tmp_path):
    """--dmd-regression-weight: the teacher's ODE pairs are generated once into the cache and a second run with the
    same settings reads them (no second file, the same recorded cost)."""
    from fewstep.metrics.cache import cache_dir

    def run(out):
        (path,) = toy_distill(ring_teacher, out, "dmd2", steps="1", train_steps=4, dmd_gan_weight=0.0,
                              dmd_regression_weight=0.25, dmd_regression_pairs=64)
        return sorted(cache_dir().rglob("*.safetensors")), load_model(path)

    before = sorted(cache_dir().rglob("*.safetensors"))  # the cache is shared with other tests
    files, first = run(tmp_path / "a")
    again, second = run(tmp_path / "b")
    new = set(files) - set(before)
    assert len(new) == 1 and "pairs" in str(new.pop()) and again == files
    assert "dmd_regression_weight = 0.25" in (tmp_path / "a" / "config.toml").read_text()
    assert all(torch.equal(p, q) for p, q in zip(first.network.parameters(), second.network.parameters()))


@pytest.mark.parametrize("method", list(METHODS))
def test_preview_grids_during_distillation(tiny_teacher, tmp_path, method):
    rounds = {"pd_start_steps": 1} if "pd_start_steps" in option_names(method) else {}
    cfg = resolve_distill_config({"teacher": str(tiny_teacher), "method": method, "preset": "tiny", "device": "cpu",
                                  "steps": "1", "train_steps": 4, "sample_every": 2, **rounds})
    distill(cfg, tmp_path)
    stage = "round-001" if method in ("progressive", "lightning") else "train"
    assert (tmp_path / stage / "samples" / "step-0000002.png").exists()


def test_distill_refuses_a_non_empty_out_unless_forced(tiny_teacher, tmp_path, capsys):
    """Distilling into a folder that holds something else is one line and exit 2, and leaves it as it was."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    argv = ["distill", "--teacher", str(tiny_teacher), "--method", "consistency", "--preset", "tiny", "--steps", "1",
            "--train-steps", "2", "--monitor-n", "0", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty" in err and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main([*argv, "--force"]) == 0
    assert (out / "model" / "fewstep.json").exists() and (out / "notes.txt").read_text() == "keep"


def test_sid_init_sigma_starts_the_generator_there_and_is_recorded(ring_teacher, tmp_path):
    """--sid-init-sigma (the SiD paper's init_sigma): the one-step generator takes init_sigma * z at sigma init_sigma,
    and the exported student records that sigma, so `fewstep eval` and the preview draw it the same way; a value
    outside the teacher's noise levels is refused."""
    (path,) = toy_distill(ring_teacher, tmp_path / "sid", "sid", steps="1", train_steps=4, sid_init_sigma=2.5)
    model = load_model(path)
    assert model.info.sampler["sigmas"] == [2.5]
    start = draw(ring_teacher, "euler", 1)  # the teacher's D at sigma_max: shrunk toward the data's mean (std ~0.5)
    sigmas = torch.tensor([*model.info.sampler["sigmas"], 0.0])
    student = generate(model.denoiser, model.info.shape, N, sigmas, "consistency", 0).samples  # ~ D(2.5 z, 2.5)
    assert student.std(0).min() > 1.4 * start.std(0).max()  # measured 0.79 vs 0.51: it starts spread out
    with pytest.raises(UserError, match="--sid-init-sigma must lie in"):
        toy_distill(ring_teacher, tmp_path / "bad", "sid", steps="1", train_steps=4, sid_init_sigma=500.0)
    optimisers = sorted((tmp_path / "sid").glob("**/checkpoints/*/optim-*.json"))
    assert {p.name for p in optimisers} == {"optim-fake.json", "optim-generator.json"}
    for p in optimisers:  # SiD's Adams run without momentum, as its official code (beta1 = 0)
        assert json.loads(p.read_text())["param_groups"][0]["betas"] == [0.0, 0.999]
    toy_distill(ring_teacher, tmp_path / "sid-b1", "sid", steps="1", train_steps=2, sid_adam_beta1=0.5)
    optimisers = sorted((tmp_path / "sid-b1").glob("**/checkpoints/*/optim-*.json"))
    assert len(optimisers) >= 2 and all(json.loads(p.read_text())["param_groups"][0]["betas"] == [0.5, 0.999]
                                        for p in optimisers)
