"""Every bad input is one line on stderr and exit 2 (an I/O failure: exit 1), never a traceback (issue 14)."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fewstep.cli import main
from fewstep.core.errors import UserError

WEIGHTS = "diffusion_pytorch_model.safetensors"
READ_ONLY = Path("/proc/sys/fewstep-out")  # a kernel folder no process may create files in


def one_line_error(capsys, argv: list[str], code: int = 2) -> str:
    """Run the CLI; assert the exit code, a single stderr line and no traceback; return the line."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("fewstep")]  # progress bars aside
    assert rc == code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def model(tiny_teacher, tmp_path) -> Path:
    """A copy of the tiny teacher's model folder that a test may damage."""
    return Path(shutil.copytree(tiny_teacher / "model", tmp_path / "model"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(4096))


def _wrong_shape(path: Path) -> None:
    sd = load_file(path)
    key = next(k for k, v in sd.items() if v.ndim == 4)
    sd[key] = torch.zeros(*sd[key].shape[:-1], sd[key].shape[-1] + 1)
    save_file(sd, path)


def _json(value) -> callable:
    return lambda path: path.write_text(json.dumps(value) if not isinstance(value, str) else value)


DAMAGE = {
    "truncated weights": (WEIGHTS, _truncate),
    "random-byte weights": (WEIGHTS, _random_bytes),
    "wrong-shape weights": (WEIGHTS, _wrong_shape),
    "random-byte fewstep.json": ("fewstep.json", _random_bytes),
    "truncated fewstep.json": ("fewstep.json", _truncate),
    "fewstep.json of wrong types": ("fewstep.json", _json({"arch": "unet", "network_class": "UNet2DModel",
                                                            "sigma_data": "half", "shape": "big"})),
    "fewstep.json a list": ("fewstep.json", _json([1, 2])),
    "random-byte config.json": ("config.json", _random_bytes),
    "config.json of wrong types": ("config.json", _json({"_class_name": "UNet2DModel", "sample_size": "big",
                                                          "block_out_channels": "wide"})),
}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("command", ["sample", "eval", "distill-teacher", "distill-init", "bench"])
def test_damaged_model_folder_is_one_line(capsys, tmp_path, tiny_teacher, model, command, damage):
    name, spoil = DAMAGE[damage]
    spoil(model / name)
    if command == "distill-init" and name == "fewstep.json":
        pytest.skip("the teacher's record is read first; covered by distill-teacher")
    argv = {"sample": ["sample", "--model", str(model), "--out", str(tmp_path / "g.png"), "--n", "4"],
            "eval": ["eval", "--model", str(model), "--n", "8", "--results", str(tmp_path / "r.jsonl")],
            "distill-teacher": ["distill", "--teacher", str(model), "--out", str(tmp_path / "d"), "--preset", "tiny",
                                "--device", "cpu"],
            "distill-init": ["distill", "--teacher", str(tiny_teacher), "--init", str(model), "--out",
                             str(tmp_path / "d"), "--preset", "tiny", "--device", "cpu"],
            "bench": ["bench", "--teacher", str(model), "--out", str(tmp_path / "b"), "--n", "8"]}[command]
    assert "error" in one_line_error(capsys, argv)


def _schedule(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "s.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


@pytest.mark.parametrize("argv,message", [
    (["train", "--out", "{tmp}/r", "--preset", "tiny", "--steps", "0"], "steps must be"),
    (["train", "--out", "{tmp}/r", "--preset", "tiny", "--steps", "-5"], "steps must be"),
    (["train", "--out", "{tmp}/r", "--preset", "tiny", "--batch-size", "0"], "batch_size must be"),
    (["train", "--out", "{tmp}/r", "--preset", "tiny", "--lr", "-1"], "lr must be"),
    (["train", "--out", "{tmp}/r", "--preset", "tiny", "--lr", "nan"], "lr must be"),
    (["train", "--out", "{tmp}/r", "--preset", "tiny", "--device", "nonsense"], "--device must be"),
    (["distill", "--teacher", "{teacher}", "--out", "{tmp}/d", "--preset", "tiny", "--train-steps", "0"],
     "train_steps must be"),
    (["search-schedule", "--model", "{teacher}", "--nfe", "4", "--out", "{tmp}/s.json", "--n", "0"], "--n must be"),
    (["sample", "--model", "{teacher}", "--out", "{tmp}/g.png", "--n", "0"], "--n must be"),
    (["sample", "--model", "{teacher}", "--out", "{tmp}/g.png", "--batch-size", "-1"], "--batch-size must be"),
    (["eval", "--model", "{teacher}", "--n", "-3"], "--n must be"),
    (["sample", "--model", "{teacher}", "--out", "{tmp}/g.png", "--n", "100000000"], "GiB of samples"),
    (["sample", "--model", "{teacher}", "--out", "{tmp}/g.png", "--device", "nonsense"], "--device must be"),
    (["eval", "--model", "{teacher}", "--device", "nonsense"], "--device must be"),
    (["sample", "--model", "{teacher}", "--out", "{tmp}", "--n", "4"], "is a folder"),
    (["eval", "--model", "{teacher}", "--results", "{tmp}", "--n", "8"], "is a folder"),
    (["train", "--out", "{tmp}/file.txt", "--preset", "tiny"], "is a file"),
    (["bench", "--teacher", "{teacher}", "--out", "{tmp}/file.txt"], "is a file"),
    (["sample", "--model", "{teacher}", "--out", "{tmp}/g.png", "--n", "4", "--schedule", "{strings}"],
     "not a schedule file"),
    (["sample", "--model", "{teacher}", "--out", "{tmp}/g.png", "--n", "4", "--schedule", "{garbage}"],
     "not a schedule file"),
    (["sample", "--model", "{teacher}", "--out", "{tmp}/g.png", "--n", "4", "--schedule", "{nan}"],
     "not a schedule file"),
])
def test_bad_flags_and_files_are_one_line(capsys, tmp_path, tiny_teacher, argv, message):
    (tmp_path / "file.txt").write_text("not a folder")
    names = {"tmp": tmp_path, "teacher": tiny_teacher,
             "strings": _schedule(tmp_path, '{"sigmas": ["a", "b"], "sampler": "euler"}'),
             "garbage": _schedule(tmp_path, random.Random(1).randbytes(300)),
             "nan": _schedule(tmp_path, '{"sigmas": [80, NaN, 1], "sampler": "euler"}')}
    line = one_line_error(capsys, [a.format(**names) for a in argv])
    assert message in line
    assert not (tmp_path / "r" / "model").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["sample", "eval", "train", "search-schedule", "bench"])
def test_cuda_on_a_cpu_machine_is_one_line(capsys, tmp_path, tiny_teacher, command):
    argv = {"sample": ["sample", "--model", str(tiny_teacher), "--out", str(tmp_path / "g.png")],
            "eval": ["eval", "--model", str(tiny_teacher)],
            "train": ["train", "--out", str(tmp_path / "r"), "--preset", "tiny"],
            "search-schedule": ["search-schedule", "--model", str(tiny_teacher), "--nfe", "4", "--out",
                                str(tmp_path / "s.json")],
            "bench": ["bench", "--teacher", str(tiny_teacher), "--out", str(tmp_path / "b")]}[command]
    assert "no CUDA GPU" in one_line_error(capsys, [*argv, "--device", "cuda"])


@pytest.mark.skipif(os.access(READ_ONLY.parent, os.W_OK), reason="needs a folder this process cannot write")
@pytest.mark.parametrize("argv", [["sample", "--model", "{teacher}", "--out", "{ro}/g.png"],
                                  ["eval", "--model", "{teacher}", "--results", "{ro}/r.jsonl"],
                                  ["train", "--out", "{ro}/run", "--preset", "tiny"]])
def test_unwritable_output_is_refused_before_compute(capsys, tiny_teacher, argv):
    assert "not writable" in one_line_error(capsys, [a.format(teacher=tiny_teacher, ro=READ_ONLY) for a in argv])


@pytest.fixture()
def run_copy(tiny_teacher, tmp_path) -> Path:
    """A copy of the tiny teacher's run folder (checkpoints at steps 10 and 20)."""
    return Path(shutil.copytree(tiny_teacher, tmp_path / "run", ignore=shutil.ignore_patterns(".lock")))


@pytest.mark.parametrize("damage", ["missing weights", "truncated weights", "random-byte state", "truncated optim"])
def test_damaged_checkpoint_is_one_line(capsys, run_copy, damage):
    ckpt = run_copy / "checkpoints" / "step-0000020"
    {"missing weights": lambda: (ckpt / "model.safetensors").unlink(),
     "truncated weights": lambda: _truncate(ckpt / "model.safetensors"),
     "random-byte state": lambda: _random_bytes(ckpt / "state.json"),
     "truncated optim": lambda: _truncate(ckpt / "optim-model.safetensors")}[damage]()
    line = one_line_error(capsys, ["train", "--out", str(run_copy), "--resume", "--steps", "30"])
    assert "checkpoint" in line and "unreadable" in line


def test_torn_last_line_of_metrics_is_dropped(tmp_path):
    from fewstep.core.files import read_json_lines

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 5, "loss": 1.0}\n{"step": 10, "lo')
    assert read_json_lines(path) == [{"step": 5, "loss": 1.0}]
    path.write_text('{"step": 5}\nnot json\n{"step": 10}\n')
    with pytest.raises(UserError, match="line 2"):
        read_json_lines(path)


WRITER = ("import sys; from fewstep.core.files import append_json_lines\n"
          "for i in range(200): append_json_lines(sys.argv[1], [{'writer': sys.argv[2], 'i': i, 'pad': 'x' * 20000}])")


def test_concurrent_appends_never_interleave_a_row(tmp_path):
    """Two evals appending to one results file at once keep every row whole (no run lock refuses the second)."""
    from fewstep.core.files import read_json_lines

    path = tmp_path / "results.jsonl"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), w]) for w in "ab"]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    rows = read_json_lines(path)
    assert sorted((r["writer"], r["i"]) for r in rows) == [(w, i) for w in "ab" for i in range(200)]


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["checkpoint", "export"])
def test_disk_full_is_one_io_line_and_leaves_no_temporaries(capsys, tmp_path, monkeypatch, where):
    import fewstep.train.checkpoint as checkpoint
    import fewstep.train.teacher as teacher

    if where == "checkpoint":
        monkeypatch.setattr(checkpoint, "save_file", _disk_full)
    else:
        monkeypatch.setattr(teacher, "save_model", _disk_full)
    out = tmp_path / "run"
    line = one_line_error(capsys, ["train", "--out", str(out), "--preset", "tiny", "--device", "cpu", "--steps", "10"],
                          code=1)
    assert "No space left" in line
    assert not list(out.glob(".tmp-*")) and not list((out / "checkpoints").glob(".tmp-*"))
    assert not (out / "model").exists()


def test_stale_temporaries_are_cleaned_on_the_next_start(run_copy):
    from fewstep.train.teacher import resolve_train_config, train_teacher

    (run_copy / "checkpoints" / ".tmp-step-0000030").mkdir()
    (run_copy / ".tmp-model-123").mkdir()
    train_teacher(resolve_train_config({}, out=run_copy, resume=True), run_copy, resume=True)
    assert not list(run_copy.rglob(".tmp-*"))


def _mutations(data: bytes) -> list[bytes]:
    """Random bytes of a few sizes, truncations at several lengths, an empty file."""
    rng = random.Random(len(data))
    cuts = sorted({0, 1, len(data) // 10, len(data) // 2, len(data) - 1})
    return [rng.randbytes(n) for n in (1, 64, 4096)] + [data[:c] for c in cuts if c < len(data)]


def _fuzz(path: Path, read) -> None:
    """Every mutation of `path` is read fine or refused with a one-line UserError; nothing else escapes."""
    original = path.read_bytes()
    for mutated in _mutations(original):
        path.write_bytes(mutated)
        try:
            read()
        except UserError as e:
            assert "\n" not in str(e) and (path.name in str(e) or path.parent.name in str(e)), str(e)
    path.write_bytes(original)


def test_fuzz_every_file_fewstep_reads(tiny_teacher, tmp_path):
    from fewstep.accel.errorcache import ResidualProfile
    from fewstep.bench.run import read_results
    from fewstep.core.files import read_json_lines
    from fewstep.core.schedules import read_schedule_file
    from fewstep.models.io import load_model
    from fewstep.train.checkpoint import load_checkpoint

    run = Path(shutil.copytree(tiny_teacher, tmp_path / "run", ignore=shutil.ignore_patterns(".lock")))
    for f in sorted((run / "model").iterdir()):
        _fuzz(f, lambda: load_model(run / "model"))
    ckpt = run / "checkpoints" / "step-0000020"
    for f in sorted(ckpt.iterdir()):
        _fuzz(f, lambda: load_checkpoint(ckpt))
    _fuzz(run / "metrics.jsonl", lambda: read_json_lines(run / "metrics.jsonl", "a metrics log"))
    schedule = tmp_path / "schedule.json"
    schedule.write_text(json.dumps({"sigmas": [80.0, 1.0, 0.0], "sampler": "euler"}))
    _fuzz(schedule, lambda: read_schedule_file(schedule))
    profile = ResidualProfile("euler", [1.0, 0.0], [1.0], [[1.0]], 1, 0).save(tmp_path / "profile.json")
    _fuzz(profile, lambda: ResidualProfile.load(profile))
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"sampler": "heun", "nfe": 35}) + "\n" + json.dumps({"sampler": "euler"}) + "\n")
    _fuzz(results, lambda: read_results(results))
