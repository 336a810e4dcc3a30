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
    code, stdout, _ = run(capsys, "demo", "--out", str(out), "--preset", "tiny", "--device", "cpu")
    assert code == 0 and "teacher already trained" in stdout
