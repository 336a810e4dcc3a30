"""A real `fewstep train` process stopped by Ctrl-C (SIGINT) or killed (SIGKILL) resumes to identical weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fewstep.train.checkpoint import latest_checkpoint
from tests.test_train import assert_same, final_state

FLAGS = {"dataset": "moons", "preset": "tiny", "device": "cpu", "steps": "200", "checkpoint_every": "10"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # bit-exactness holds for one thread count: CPU reductions depend on it


def start(out) -> subprocess.Popen:
    argv = [sys.executable, "-m", "fewstep.cli", "train", "--out", str(out)]
    for key, value in FLAGS.items():
        argv += ["--" + key.replace("_", "-"), value]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for_checkpoint(out, proc, timeout=120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if latest_checkpoint(out / "checkpoints") is not None:
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    pytest.fail("no checkpoint appeared")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    proc = start(out)
    assert proc.wait(timeout=300) == 0
    return final_state(out)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)])
def test_stopped_process_resumes_bit_exactly(tmp_path, reference, sig, code):
    proc = start(tmp_path)
    wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == code
    if sig == signal.SIGINT:
        assert "interrupted at step" in err and "Traceback" not in err
    stopped_at = latest_checkpoint(tmp_path / "checkpoints").name
    resume = subprocess.run([sys.executable, "-m", "fewstep.cli", "train", "--out", str(tmp_path), "--resume"],
                            capture_output=True, text=True, timeout=300, env=ENV)
    assert resume.returncode == 0, resume.stderr
    assert f"resuming from {tmp_path / 'checkpoints' / stopped_at}" in resume.stderr
    assert_same(reference, final_state(tmp_path))
