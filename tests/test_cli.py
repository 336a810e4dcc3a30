"""The command line: train, sample, config files and flags, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from fewstep.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_help():
    result = subprocess.run([sys.executable, "-m", "fewstep.cli", "train", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--dataset", "--preset", "--seed", "--config", "--resume", "--dry-run", "--device"):
        assert option in result.stdout


def test_dry_run_layers_preset_config_file_and_flags(capsys, tmp_path):
    cfg = tmp_path / "train.toml"
    cfg.write_text('dataset = "moons"\nlr = 0.002\nsteps = 77\n')
    code, out, _ = run(capsys, "train", "--out", str(tmp_path / "r"), "--preset", "small", "--config", str(cfg),
                       "--steps", "99", "--dry-run")
    assert code == 0
    assert 'dataset = "moons"' in out and "lr = 0.002" in out and "steps = 99" in out
    assert "batch_size = 512" in out  # the small preset for vector data
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv,message", [
    (["train", "--out", "{tmp}/r", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["train", "--out", "{tmp}/r", "--dataset", "folder:{tmp}/missing"], "does not exist"),
    (["train", "--out", "{tmp}/r", "--steps", "many"], "expects int"),
    (["train", "--out", "{tmp}/r", "--config", "{tmp}/none.toml"], "does not exist"),
    (["sample", "--model", "{tmp}/missing", "--out", "{tmp}/g.png"], "does not exist"),
    (["sample", "--model", "{tmp}", "--out", "{tmp}/g.png"], "not a model folder"),
])
def test_user_mistakes_exit_2_with_one_line(capsys, tmp_path, argv, message):
    code, _, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_corrupt_image_in_folder_names_the_file(capsys, tmp_path):
    data = tmp_path / "imgs"
    data.mkdir()
    Image.new("RGB", (8, 8), "red").save(data / "ok.png")
    (data / "broken.png").write_bytes(b"not a png")
    code, _, err = run(capsys, "train", "--out", str(tmp_path / "r"), "--dataset", f"folder:{data}", "--preset", "tiny")
    assert code == 2 and "broken.png" in err and err.count("\n") == 1


def test_train_then_sample(capsys, tmp_path, tiny_teacher):
    code, out, _ = run(capsys, "sample", "--model", str(tiny_teacher), "--steps", "4", "--n", "8",
                       "--out", str(tmp_path / "grid.png"), "--seed", "3", "--classes")
    assert code == 0 and "NFE 7" in out
    assert Image.open(tmp_path / "grid.png").size[0] >= 8 * 8
    code, _, err = run(capsys, "sample", "--model", str(tiny_teacher), "--steps", "0", "--out", str(tmp_path / "g.png"))
    assert code == 2 and "steps must be at least 1" in err
    code, _, err = run(capsys, "sample", "--model", str(tiny_teacher), "--class-label", "12", "--out", str(tmp_path / "g.png"))
    assert code == 2 and "0..9" in err


def test_cli_train_on_2d_writes_scatter(capsys, tmp_path):
    code, out, _ = run(capsys, "train", "--out", str(tmp_path / "r"), "--dataset", "8gaussians", "--preset", "tiny",
                       "--device", "cpu")
    assert code == 0 and "model saved" in out
    code, out, _ = run(capsys, "sample", "--model", str(tmp_path / "r"), "--n", "200", "--out", str(tmp_path / "s.png"))
    assert code == 0 and (tmp_path / "s.png").exists()


def test_demo_trains_distills_benches_and_resumes(capsys, tmp_path):
    """`fewstep demo --preset tiny`: teacher, one-step student, a bench with its report; a re-run reuses them all."""
    out = tmp_path / "demo"
    code, stdout, _ = run(capsys, "demo", "--out", str(out), "--preset", "tiny", "--device", "cpu")
    assert code == 0 and (out / "report" / "report.html").exists()
    assert "reflow student" in stdout and "report:" in stdout
    rows = json.loads((out / "report" / "results.json").read_text())
    assert {r["role"] for r in rows} == {"converged", "sampler", "student"}
    student = next(r for r in rows if r["role"] == "student")
    assert student["nfe"] == 1 and student["method"] == "reflow"
    assert "[1/3] train the digits teacher" in stdout and "[3/3] measure both on the ruler" in stdout
    code, stdout, _ = run(capsys, "demo", "--out", str(out), "--preset", "tiny", "--device", "cpu")
    assert code == 0 and "teacher already trained" in stdout and "over all 2 runs of this folder" in stdout


def test_every_flag_has_a_sentence_for_help_and_one_default():
    """No help string is a field's own name; no flag states two defaults; every command has a description."""
    import argparse

    from fewstep.cli import COMMANDS, build_parser

    for name in COMMANDS:
        parser = build_parser([name])
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        assert sub.description and len(sub.description.split()) > 5, name
        for action in sub._actions:
            text = (action.help or "").split(" (default")[0]
            words = [w for w in text.replace("|", " ").split() if any(c.isalpha() for c in w)]
            assert len(words) >= 3, (name, action.option_strings, action.help)
            assert text.replace(" ", "_").lower() != action.dest.lower(), (name, action.dest)
            assert (action.help or "").count("default") <= 1, (name, action.option_strings, action.help)


def test_sampling_a_run_that_is_still_training_names_its_checkpoint(capsys, tmp_path):
    run_dir = tmp_path / "r"
    (run_dir / "checkpoints" / "step-0000200").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-0000200" / "state.json").write_text("{}")
    (run_dir / "config.toml").write_text("")
    code, _, err = run(capsys, "sample", "--model", str(run_dir), "--out", str(tmp_path / "g.png"))
    assert code == 2 and err.count("\n") == 1
    assert "not exported yet (latest checkpoint: checkpoints/step-0000200)" in err


def test_sample_says_which_conditioning_it_used_and_checks_sampler_options(capsys, tmp_path, tiny_teacher):
    common = ["sample", "--model", str(tiny_teacher), "--n", "4", "--steps", "2", "--out", str(tmp_path / "g.png")]
    code, out, _ = run(capsys, *common)
    assert code == 0 and "class labels cycling 0..9" in out
    code, out, _ = run(capsys, *common, "--class-label", "3")
    assert code == 0 and "every sample conditioned on class 3" in out
    code, _, err = run(capsys, *common, "--sampler", "euler", "--eta", "0.5")
    assert code == 2 and err.count("\n") == 1 and "sampler euler takes no option 'eta'" in err
    code, _, err = run(capsys, *common, "--schedule", "loglinear", "--rho", "5")
    assert code == 2 and err.count("\n") == 1 and "schedule loglinear takes no option 'rho'" in err


def test_plan_options_reach_the_sampler_and_the_record(tiny_teacher):
    import torch

    from fewstep.models.io import load_model
    from fewstep.plan import PlanSettings, build_plan, sample

    model = load_model(tiny_teacher)
    plain = build_plan(model, PlanSettings(sampler="edm_stochastic", steps=3))
    churned = build_plan(model, PlanSettings(sampler="edm_stochastic", steps=3, sampler_options={"S_churn": 80.0},
                                             schedule_options={"rho": 3.0}))
    assert churned.sampler_record()["options"] == {"S_churn": 80.0}
    assert churned.sampler_record()["schedule_options"] == {"rho": 3.0}
    assert not torch.equal(plain.sigmas, churned.sigmas)
    a, b = (sample(model, p, 4).samples for p in (plain, churned))
    assert not torch.equal(a, b)
    ddim = build_plan(model, PlanSettings(sampler="ddim", steps=3, sampler_options={"eta": 0.0}))
    euler = build_plan(model, PlanSettings(sampler="euler", steps=3))
    assert torch.equal(sample(model, ddim, 4).samples, sample(model, euler, 4).samples)
    bf16 = build_plan(model, PlanSettings(steps=2, mixed_precision="bf16"))
    assert sample(model, bf16, 4).samples.dtype == torch.float32 and bf16.settings().mixed_precision == "bf16"
