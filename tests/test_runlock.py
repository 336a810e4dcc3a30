"""One run per folder: a second process on a held --out (or results file) is refused in one line naming the holder;
the lock dies with its process (issue 14)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fewstep.cli import main
from fewstep.core.errors import UserError
from fewstep.runlock import hold

HOLDER = ("import sys; from fewstep.runlock import hold\n"
          "with hold(sys.argv[1], folder=sys.argv[2] == 'folder'):\n"
          "    print('held', flush=True); sys.stdin.read()")


def holder(path: Path, folder: bool = True) -> subprocess.Popen:
    """Another process holding `path`'s lock until its stdin closes."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "folder" if folder else "file"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def refusal(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    return err[0]


def test_second_run_on_one_out_is_refused_and_the_first_finishes_alone(capsys, tmp_path):
    out = tmp_path / "run"
    first = holder(out)
    try:
        line = refusal(capsys, ["train", "--out", str(out), "--preset", "tiny", "--device", "cpu", "--steps", "10"])
        assert f"PID {first.pid}" in line and "in use" in line
        assert not (out / "metrics.jsonl").exists()  # the refused run wrote nothing
    finally:
        first.communicate("")
    assert main(["train", "--out", str(out), "--preset", "tiny", "--device", "cpu", "--steps", "10"]) == 0
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10]  # exactly one run's lines


def test_results_files_and_bench_folders_are_locked(capsys, tmp_path, tiny_teacher):
    results = tmp_path / "r.jsonl"
    first = holder(results, folder=False)
    try:
        assert f"PID {first.pid}" in refusal(capsys, ["eval", "--model", str(tiny_teacher), "--results", str(results),
                                                      "--n", "8"])
    finally:
        first.communicate("")
    bench = holder(tmp_path / "bench")
    try:
        assert f"PID {bench.pid}" in refusal(capsys, ["bench", "--teacher", str(tiny_teacher), "--out",
                                                      str(tmp_path / "bench"), "--n", "8"])
    finally:
        bench.communicate("")


def test_kill_9_leaves_no_stale_lock(tmp_path):
    first = holder(tmp_path)
    with pytest.raises(UserError, match=f"PID {first.pid}"):
        with hold(tmp_path):
            pass
    first.send_signal(signal.SIGKILL)
    first.wait()
    with hold(tmp_path):  # the kernel dropped the dead process's lock
        with hold(tmp_path):  # one process may nest holds of its own folder
            pass
