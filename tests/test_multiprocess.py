"""Two CPU processes (gloo, under torchrun) train like one process with the same global batch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fewstep.distill import METHODS
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("mp_worker.py")


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_two_processes_match_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent.parent)}
    subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_port", "29517", str(WORKER), str(tmp_path)],
                   check=True, env=env, capture_output=True, timeout=300)
    subprocess.run([sys.executable, str(WORKER), str(tmp_path)], check=True, env=env, capture_output=True, timeout=300)
    rank0, rank1 = (load_file(tmp_path / f"world2-rank{r}.safetensors") for r in (0, 1))
    single = load_file(tmp_path / "world1-rank0.safetensors")
    for k in rank0:
        assert (rank0[k] - rank1[k]).abs().max() == 0, k  # DDP keeps the ranks identical
        # equal to one process up to all-reduce summation order (Adam amplifies ~1e-8 gradient differences)
        assert (rank0[k] - single[k]).abs().max() < 1e-4, k


# ---------------------------------------------------------------------------------------------- every method

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent.parent / "src")}
DISTILL = ["-m", "fewstep.cli", "distill", "--method", "{method}", "--preset", "tiny", "--steps", "1", "--device",
           "auto"]


def torchrun(port: int, *argv: str, timeout: int = 600) -> subprocess.Popen:
    return subprocess.Popen(["torchrun", "--nproc_per_node", "2", "--master_port", str(port), *argv], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def exported(run: Path) -> dict:
    return load_file(run / "model" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def every_method(tiny_teacher, tmp_path_factory) -> Path:
    """Every method distilled by two processes (one torchrun) into OUT/two and by one process into OUT/one."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun not on PATH")
    out = tmp_path_factory.mktemp("every-method")
    worker = str(WORKER.with_name("mp_distill.py"))
    two = torchrun(29530, worker, str(tiny_teacher), str(out / "two"))
    log, _ = two.communicate(timeout=900)
    assert two.returncode == 0, log[-3000:]
    one = subprocess.run([sys.executable, worker, str(tiny_teacher), str(out / "one")], env=ENV, capture_output=True,
                         text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    return out


@pytest.mark.parametrize("method", [*METHODS, "dmd2-regression"])
def test_every_method_on_two_processes_matches_one(every_method, method):
    """Under torchrun (gloo, --device auto on a CPU machine) every method trains as one process would with the same
    global batch; progressive/lightning rounds and DMD2's two networks used to crash or race on rank 1."""
    a, b = exported(every_method / "two" / method), exported(every_method / "one" / method)
    for k in a:  # up to all-reduce order: Adam turns ~1e-8 gradient differences into up to lr-sized steps
        assert (a[k] - b[k]).abs().max() < 1e-3, k
