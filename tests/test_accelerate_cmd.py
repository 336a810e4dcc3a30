"""`fewstep accelerate`: a folder of the same weights whose recorded accelerators and sampler sample, eval and bench
apply by default, equal bit for bit to the original sampled with the same flags; flags override; mistakes exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fewstep.accelerated import save_accelerated
from fewstep.cli import main
from fewstep.core.errors import UserError
from fewstep.models import ModelInfo, build_network, save_model
from fewstep.models.io import model_hash
from fewstep.plan import PlanSettings
from fewstep.sample import sample_model

SHAPE = (1, 8, 8)
FLAGS = {"cache": "deepcache:interval=2", "guidance": "adaptive:threshold=0.99", "cfg_scale": 2.0,
         "cfg_interval": (0.5, 80.0), "sampler": "dpmpp_2m", "steps": 4, "schedule": "karras"}
CLI_FLAGS = ["--cache", "deepcache:interval=2", "--guidance", "adaptive:threshold=0.99", "--cfg-scale", "2",
             "--cfg-interval", "0.5,80", "--sampler", "dpmpp_2m", "--steps", "4", "--schedule", "karras"]


def saved_unet(path, num_classes: int = 10, **info) -> str:
    """A randomly initialised digits-sized U-Net saved as a fewstep model (sampling needs no training)."""
    torch.manual_seed(0)
    net = build_network("unet", "tiny", SHAPE, num_classes)
    save_model(path, net, ModelInfo(arch="unet", network_class="UNet2DModel", num_classes=num_classes,
                                    dataset="digits", kind="image", shape=list(SHAPE), **info))
    return str(path)


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> str:
    return saved_unet(tmp_path_factory.mktemp("original"))


@pytest.fixture(scope="module")
def accelerated(original, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("parent") / "accelerated"
    assert main(["accelerate", "--model", original, "--out", str(out), *CLI_FLAGS]) == 0
    return str(out)


def draw(model: str, **flags) -> torch.Tensor:
    return sample_model(model, 6, PlanSettings(**flags), cycle_classes=True).samples


def test_the_folder_samples_like_the_original_with_the_same_flags(original, accelerated, tmp_path):
    expected = draw(original, **FLAGS)
    assert torch.equal(draw(accelerated), expected)
    assert main(["sample", "--model", accelerated, "--n", "6", "--classes", "--out", str(tmp_path / "grid.png"),
                 "--save-tensor", str(tmp_path / "samples.safetensors")]) == 0
    assert torch.equal(load_file(tmp_path / "samples.safetensors")["samples"], expected)


def test_a_searched_schedule_is_recorded_with_its_sigmas(original, tmp_path):
    searched = tmp_path / "searched.json"
    searched.write_text(json.dumps({"sigmas": [80.0, 3.1, 0.7, 0.05, 0.0], "sampler": "euler"}))
    info = save_accelerated(original, tmp_path / "acc", PlanSettings(schedule=str(searched)))
    assert info.sampler == {"name": "euler", "schedule": str(searched), "steps": 4,
                            "sigmas": pytest.approx([80.0, 3.1, 0.7, 0.05])}
    assert info.acceleration is None
    assert torch.equal(draw(str(tmp_path / "acc")), draw(original, schedule=str(searched)))


def test_the_weights_and_files_are_unchanged(original, accelerated):
    src, dst = Path(original), Path(accelerated)
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in dst.iterdir())
    assert all((src / p.name).read_bytes() == p.read_bytes() for p in dst.iterdir() if p.name != "fewstep.json")
    assert model_hash(src) == model_hash(dst)
    before, after = (json.loads((d / "fewstep.json").read_text()) for d in (src, dst))
    assert after["acceleration"] == {"cache": "deepcache:interval=2", "guidance": "adaptive:threshold=0.99",
                                     "cfg_scale": 2.0, "cfg_interval": [0.5, 80.0]}
    assert after["sampler"] == {"name": "dpmpp_2m", "schedule": "karras", "steps": 4}
    assert after["extra"] == {"accelerated_from": str(src.resolve())}
    changed = {"acceleration", "sampler", "extra"}
    assert {k: v for k, v in after.items() if k not in changed} == {k: v for k, v in before.items() if k not in changed}


@pytest.mark.parametrize("override,same_as", [
    ({"cache": "none"}, {**FLAGS, "cache": None}),
    ({"guidance": "none", "cfg_scale": 2.0}, {**FLAGS, "guidance": None, "cfg_interval": None}),
    ({"guidance": "none"}, {**FLAGS, "guidance": None, "cfg_scale": 1.0, "cfg_interval": None}),
    ({"cfg_scale": 3.0, "cfg_interval": (1.0, 80.0)}, {**FLAGS, "cfg_scale": 3.0, "cfg_interval": (1.0, 80.0)}),
    ({"steps": 3, "sampler": "euler"}, {**FLAGS, "steps": 3, "sampler": "euler"}),
])
def test_explicit_settings_override_the_record(original, accelerated, override, same_as):
    assert torch.equal(draw(accelerated, **override), draw(original, **same_as))


def test_eval_rows_on_the_folder_record_what_ran(original, accelerated, monkeypatch):
    import fewstep.bench.evaluate as evaluate

    monkeypatch.setattr(evaluate, "converged_samples", lambda teacher, n, *args, **kw: torch.zeros(n, *SHAPE))
    monkeypatch.setattr(evaluate, "evaluate_samples", lambda data, samples, labels, ref: {"fd": 0.0, "fd_floor": 0.0})
    base = {"n": 8, "timing_batch": 4}
    row = evaluate.evaluate_model(accelerated, evaluate.EvalSettings(**base))
    explicit = evaluate.evaluate_model(original, evaluate.EvalSettings(**base, **FLAGS))
    keys = ["model_hash", "sampler", "steps", "schedule", "cache", "guidance", "cfg_scale", "cfg_interval", "nfe",
            "cache_stats", "rows_evaluated", "guidance_stats", "flops_per_sample"]
    assert {k: row[k] for k in keys} == {k: explicit[k] for k in keys}
    assert row["cache"] == "deepcache:interval=2" and row["cfg_interval"] == (0.5, 80.0)
    off = evaluate.evaluate_model(accelerated, evaluate.EvalSettings(**base, cache="none", guidance="none"))
    assert off["cache"] == "none" and off["cfg_scale"] == 1.0 and off["guidance_stats"] is None
    assert off["flops_per_sample"] < explicit["flops_per_sample"]


def test_an_accelerated_folder_can_be_accelerated_again(accelerated, tmp_path):
    info = save_accelerated(accelerated, tmp_path / "again", PlanSettings(cache="none", steps=6))
    assert info.acceleration == {"cache": None, "guidance": "adaptive:threshold=0.99", "cfg_scale": 2.0,
                                 "cfg_interval": (0.5, 80.0)}
    assert info.sampler == {"name": "dpmpp_2m", "schedule": "karras", "steps": 6}


def test_a_students_recorded_sigmas_are_kept_unless_the_grid_changes(tmp_path):
    student = saved_unet(tmp_path / "student", sampler={"name": "consistency", "schedule": "karras_trailing",
                                                        "steps": 2, "sigmas": [80.0, 1.5]})
    kept = save_accelerated(student, tmp_path / "a", PlanSettings(cache="deepcache:interval=2"), dry_run=True)
    assert kept.sampler == {"name": "consistency", "schedule": "karras_trailing", "steps": 2, "sigmas": [80.0, 1.5]}
    regrid = save_accelerated(student, tmp_path / "b", PlanSettings(steps=4), dry_run=True)
    assert regrid.sampler == {"name": "consistency", "schedule": "karras_trailing", "steps": 4}


def test_dry_run_prints_the_record_and_writes_nothing(original, tmp_path, capsys):
    out = tmp_path / "acc"
    assert main(["accelerate", "--model", original, "--out", str(out), "--cache", "encprop:interval=3",
                 "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["acceleration"]["cache"] == "encprop:interval=3" and printed["sampler"]["name"] == "heun"
    assert not out.exists()


@pytest.mark.parametrize("flags,message", [
    (["--cache", "turbo"], "unknown cache 'turbo'"),
    (["--cache", "deepcache:speed=2"], "has no setting 'speed'"),
    (["--cache", "fbcache"], "fbcache works on transformers"),
    (["--guidance", "adaptive"], "give it a scale"),
    (["--guidance", "adaptive:space=x0", "--cfg-scale", "2"], "space must be one of denoised, eps"),
    (["--cfg-scale", "2", "--cfg-interval", "5,1"], "needs 0 <= LO < HI"),
    (["--cfg-interval", "1"], "takes two sigmas"),
    (["--sampler", "nope"], "unknown sampler 'nope'"),
    (["--schedule", "cosine"], "unknown schedule 'cosine'"),
    (["--steps", "0"], "steps must be at least 1"),
    (["--schedule", "missing.json"], "does not exist"),
])
def test_mistakes_exit_2_with_one_line_and_write_nothing(original, tmp_path, capsys, flags, message):
    out = tmp_path / "acc"
    assert main(["accelerate", "--model", original, "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("fewstep: error: ")
    assert not out.exists()


def test_guidance_on_an_unconditional_model_is_refused(tmp_path):
    model = saved_unet(tmp_path / "uncond", num_classes=0)
    with pytest.raises(UserError, match="needs a conditional model"):
        save_accelerated(model, tmp_path / "acc", PlanSettings(cfg_scale=2.0))
    assert save_accelerated(model, tmp_path / "acc", PlanSettings(cache="deepcache:interval=3")).acceleration["cache"]


def test_out_must_be_new_empty_or_a_model_folder_to_force_over(original, accelerated, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    for out, extra, message in [(accelerated, [], "exists and is not empty"),
                                (str(tmp_path / "notes"), ["--force"], "replaces model folders only"),
                                (original + "/inside", [], "overlaps the model folder")]:
        assert main(["accelerate", "--model", original, "--out", out, "--cache", "none", *extra]) == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    replaced = tmp_path / "replaced"
    saved_unet(replaced, num_classes=0)
    assert main(["accelerate", "--model", original, "--out", str(replaced), "--force", "--cfg-scale", "2"]) == 0
    assert json.loads((replaced / "fewstep.json").read_text())["num_classes"] == 10
    (tmp_path / "empty").mkdir()
    assert main(["accelerate", "--model", original, "--out", str(tmp_path / "empty"), "--cfg-scale", "2"]) == 0
