"""kill -9 of one rank under torchrun, then a relaunch with --resume: the run finishes as if never cut (its own
module, so that pytest-xdist's loadscope can run it beside tests/test_multiprocess.py)."""

import shutil

import pytest
import torch

from tests.test_multiprocess import DISTILL, exported, torchrun


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_a_killed_rank_then_a_relaunch_resumes(tiny_teacher, tmp_path):
    """kill -9 of rank 1 mid-run ends the job; relaunching with --resume finishes it like an uninterrupted run."""
    import signal
    import time

    import psutil

    argv = [a.format(method="consistency") for a in DISTILL] + [
        "--train-steps", "12", "--checkpoint-every", "4", "--teacher", str(tiny_teacher)]
    job = torchrun(29540, *argv, "--out", str(tmp_path / "cut"))
    checkpoints = tmp_path / "cut" / "train" / "checkpoints"
    deadline = time.time() + 300
    while not any(checkpoints.glob("step-*")) and time.time() < deadline and job.poll() is None:
        time.sleep(0.2)
    workers = [p for p in psutil.Process(job.pid).children(recursive=True) if "fewstep.cli" in " ".join(p.cmdline())]
    assert len(workers) == 2 and job.poll() is None
    rank1 = next(p for p in workers if p.environ().get("RANK") == "1")
    rank1.send_signal(signal.SIGKILL)
    job.communicate(timeout=120)
    assert job.returncode != 0 and not (tmp_path / "cut" / "model").exists()
    again = torchrun(29541, *argv, "--out", str(tmp_path / "cut"), "--resume")
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0 and "resuming from" in out, out[-3000:]
    whole = torchrun(29542, *argv, "--out", str(tmp_path / "whole"))
    out, _ = whole.communicate(timeout=600)
    assert whole.returncode == 0, out[-3000:]
    a, b = exported(tmp_path / "cut"), exported(tmp_path / "whole")
    for k in a:
        assert torch.equal(a[k], b[k]), k
