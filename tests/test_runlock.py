"""One run per folder: a second process on a held --out is refused in one line naming the holder; the lock dies with
its process (issue 14). A results file is shared: an eval waits for another writer's row, never refused."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fewstep.cli import main
from fewstep.core.errors import UserError
from fewstep.runlock import hold

HOLDER = ("import sys; from fewstep.runlock import hold\n"
          "with hold(sys.argv[1]):\n"
          "    print('held', flush=True); sys.stdin.read()")
APPENDER = ("import fcntl, sys\n"  # a writer in the middle of appending to a results file
            "with open(sys.argv[1], 'a+b') as f:\n"
            "    fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read(); f.write(b'{}\\n')")


def holder(path: Path, script: str = HOLDER) -> subprocess.Popen:
    """Another process holding `path`'s lock until its stdin closes."""
    p = subprocess.Popen([sys.executable, "-c", script, str(path)],
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


def test_an_eval_waits_for_another_writer_and_bench_folders_are_locked(capsys, tmp_path, tiny_teacher):
    results = tmp_path / "r.jsonl"
    first = holder(results, APPENDER)
    threading.Timer(1.0, first.communicate, [""]).start()  # the other writer finishes its row a second later
    assert main(["eval", "--model", str(tiny_teacher), "--results", str(results), "--n", "8", "--no-agreement"]) == 0
    assert first.returncode == 0
    assert [json.loads(ln) == {} for ln in results.read_text().splitlines()] == [True, False]  # theirs, then ours
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
