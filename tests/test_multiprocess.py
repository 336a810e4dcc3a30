"""Two CPU processes (gloo, under torchrun) train like one process with the same global batch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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
