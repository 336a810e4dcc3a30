"""A user's data end to end: a points file and labelled image sets (folder, shards) train a teacher that distils and
evaluates in a fresh process (points with mode coverage from their centres), a changed file stops that process with
one line, and two processes stream shards like one."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from fewstep.cli import main
from tests.test_data_formats import colour_folder, write_shards

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent / "src")}


def fresh_process(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fewstep.cli", *argv], env=ENV, capture_output=True, text=True,
                          timeout=600)


def four_modes(path: Path) -> Path:
    """A 2-D mixture of four unequal modes, with its centres."""
    rng = np.random.default_rng(0)
    centres = np.array([[-2, -2], [-2, 2], [2, -2], [2, 2]], dtype=np.float32)
    which = rng.choice(4, size=2000, p=[0.4, 0.3, 0.2, 0.1])
    x = (centres[which] + 0.15 * rng.normal(size=(2000, 2))).astype(np.float32)
    np.savez(path, x=x, centres=centres)
    return path


def test_points_file_trains_distils_and_evaluates_in_a_fresh_process(tmp_path):
    points = four_modes(tmp_path / "modes.npz")
    assert main(["train", "--dataset", f"points:{points}", "--preset", "tiny", "--out", str(tmp_path / "t")]) == 0
    assert main(["distill", "--teacher", str(tmp_path / "t"), "--method", "consistency", "--preset", "tiny",
                 "--steps", "1", "--out", str(tmp_path / "s")]) == 0
    done = fresh_process("eval", "--model", str(tmp_path / "s"), "--n", "400", "--json", "--no-agreement",
                         "--results", str(tmp_path / "r.jsonl"))
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["dataset"] == f"points:{points}" and row["n_ref"] == 400
    for key in ("sw2", "mmd", "modes_covered", "worst_mode_ratio", "off_mode"):
        assert np.isfinite(row[key]) and np.isfinite(row[f"{key}_floor"]), key
    assert row["modes_covered_floor"] == 1.0 and row["off_mode_floor"] < 0.01  # real points sit on their modes
    assert "logp" not in row  # a file's density is unknown

    np.savez(points, x=np.zeros((10, 2), np.float32))  # the file changes after training
    changed = fresh_process("eval", "--model", str(tmp_path / "s"), "--n", "400", "--results", str(tmp_path / "r2"))
    assert changed.returncode == 2 and "Traceback" not in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1 and "modes.npz" in changed.stderr


@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_an_image_set_trains_distils_and_evaluates_in_a_fresh_process(tmp_path, kind):
    """Labelled 8x8 images in class sub-folders or in tar shards: teacher, one-step student, and the ruler (its own
    feature network for these classes) in a new process."""
    root = (colour_folder(tmp_path / "f", 60, size=(8, 8), classes=3, captions="none") if kind == "folder"
            else write_shards(tmp_path / "s", 60, size=(8, 8), captions=False))
    assert main(["train", "--dataset", f"{kind}:{root}", "--preset", "tiny", "--out", str(tmp_path / "t")]) == 0
    assert main(["distill", "--teacher", str(tmp_path / "t"), "--method", "consistency", "--preset", "tiny",
                 "--steps", "1", "--out", str(tmp_path / "s1")]) == 0
    done = fresh_process("eval", "--model", str(tmp_path / "s1"), "--n", "48", "--json", "--no-agreement",
                         "--results", str(tmp_path / "r.jsonl"))
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["dataset_spec"].startswith(f"{kind}:") and row["nfe"] == 1
    for key in ("fd", "precision", "recall", "accuracy"):
        assert np.isfinite(row[key]) and np.isfinite(row[f"{key}_floor"]), key


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_processes_stream_shards_like_one(tmp_path):
    shards = write_shards(tmp_path / "shards", 40, size=(8, 8))
    argv = ["train", "--dataset", f"shards:{shards}", "--preset", "tiny", "--steps", "4", "--batch-size", "8",
            "--checkpoint-every", "0", "--sample-every", "0"]
    two = subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_port", "29519", "-m", "fewstep.cli", *argv,
                          "--out", str(tmp_path / "two")], env=ENV, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    one = fresh_process(*argv, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = (load_file(tmp_path / run / "model" / "diffusion_pytorch_model.safetensors") for run in ("two", "one"))
    for k in a:  # equal up to all-reduce summation order
        assert (a[k] - b[k]).abs().max() < 1e-4, k
