"""LoRA students: adapters only train, the export is a merged student and diffusers' LoRA weights, resume is exact."""

from __future__ import annotations

import json

import pytest
import torch

from fewstep.cli import main
from fewstep.distill import distill, resolve_distill_config
from fewstep.models.io import load_model
from tests.test_train import assert_same, final_state


def _cfg(teacher, method: str, **extra):
    return resolve_distill_config({"teacher": str(teacher), "method": method, "preset": "tiny", "device": "cpu",
                                   "steps": "1", "lora_rank": 2, "lora_alpha": 4, "monitor_n": 0, **extra})


@pytest.mark.parametrize("method", ["consistency", "dmd2", "progressive"])
def test_lora_student_changes_only_the_targets(tiny_teacher, tmp_path, method):
    paths = distill(_cfg(tiny_teacher, method, train_steps=3, gradient_checkpointing=True), tmp_path)
    teacher, student = load_model(tiny_teacher).network, load_model(paths[-1]).network
    changed = {n for (n, a), b in zip(teacher.named_parameters(), student.parameters()) if not torch.equal(a, b)}
    assert changed and all(n.split(".")[-2] in ("to_q", "to_k", "to_v", "0") for n in changed)
    record = json.loads((paths[-1] / "fewstep.json").read_text())["extra"]["distill"]
    assert record["lora"] == {"rank": 2, "alpha": 4, "targets": "to_q,to_k,to_v,to_out.0"}
    assert record["peak_memory_mb"] > 0 and (paths[-1] / "pytorch_lora_weights.safetensors").exists()


def test_killed_lora_distillation_resumes_bit_exactly(tiny_teacher, tmp_path):
    distill(_cfg(tiny_teacher, "consistency"), tmp_path / "full")
    distill(_cfg(tiny_teacher, "consistency"), tmp_path / "cut", stop_at=4)
    distill(_cfg(tiny_teacher, "consistency"), tmp_path / "cut", resume=True)
    full, cut = final_state(tmp_path / "full" / "train"), final_state(tmp_path / "cut" / "train")
    assert any("lora_A" in k for k in full)
    assert_same(full, cut)


def test_lora_weights_load_into_the_teachers_pipeline(tmp_path):
    """pipe = StableDiffusionPipeline.from_pretrained(teacher); pipe.load_lora_weights(student) samples what
    fewstep samples from the merged student folder."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    from fewstep.distill.common import DistillContext
    from fewstep.models.tiny import save_tiny_pipeline
    from tests.test_pipelines import diffusers_images, fewstep_images

    teacher = save_tiny_pipeline(tmp_path / "teacher")
    ctx = DistillContext(_cfg(teacher, "progressive", lora_targets="to_q,to_k,to_v,to_out.0,conv1"), tmp_path / "run")
    student = ctx.make_student()
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter (peft starts lora_B at zero)
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    path = ctx.export(student, "model", "euler", [2], "test")
    pipe = StableDiffusionPipeline.from_pretrained(teacher, safety_checker=None)
    pipe.load_lora_weights(path)
    pipe.scheduler = EulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler")
    pipe.set_progress_bar_config(disable=True)
    _, x, _, ours = fewstep_images(path, 2, 1.0)
    _, _, _, plain = fewstep_images(teacher, 2, 1.0)
    theirs = diffusers_images(pipe, x, 2, 1.0)
    assert (ours.clamp(-1, 1) - theirs).abs().max() < 1e-4
    assert (ours - plain).abs().max() > 1e-2  # the adapter changes the samples


@pytest.mark.parametrize("argv, message", [
    (["--lora-rank", "2", "--student-preset", "tiny"], "--lora-rank"),
    (["--lora-rank", "2", "--lora-targets", "no_such_layer"], "--lora-targets"),
])
def test_bad_lora_options_are_one_line_errors(tiny_teacher, tmp_path, capsys, argv, message):
    code = main(["distill", "--teacher", str(tiny_teacher), "--method", "reflow", "--preset", "tiny", "--device",
                 "cpu", "--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err.splitlines()[-1] and "Traceback" not in err
