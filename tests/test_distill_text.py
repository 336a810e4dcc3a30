"""Distillation of text-to-image teachers: the tiny captions teacher (latents of captioned images, its CFG folded in)
and a user's Stable-Diffusion-layout folder with a prompts file; every method exports a pipeline that fewstep and
plain diffusers sample alike."""

from __future__ import annotations

import functools
import json
from dataclasses import fields

import pytest
import torch

from fewstep.cli import main
from fewstep.distill import METHODS, distill, resolve_distill_config
from fewstep.models.io import load_model
from fewstep.plan import PlanSettings, build_plan
from fewstep.sample import sample_model

DATA_FREE = ("dmd2", "reflow", "sid")  # dmd2 with dmd_gan_weight 0
FAST = {"preset": "tiny", "device": "cpu", "train_steps": 2, "batch_size": 4, "steps": "1,2", "monitor_n": 0}
FAST_OPTIONS = {"reflow_pairs": 8, "reflow_solver_steps": 2, "cd_grid": 4, "pd_start_steps": 2}
PROMPTS = ["a small red circle on the left", "a large blue square above a small yellow triangle"]


def _cfg(teacher, method: str, **extra):
    own = {f.name for f in fields(METHODS[method].options)}
    fast = {k: v for k, v in FAST_OPTIONS.items() if k in own}
    return resolve_distill_config({"teacher": str(teacher), "method": method, **FAST, **fast, **extra})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny captions teacher (run directory) on a 64-scene captions set, which distillation reloads by name."""
    from fewstep.data import captions
    from fewstep.train.teacher import train_teacher
    from tests.test_train_text2image import captions_config

    original = captions.load_captions

    @functools.lru_cache(maxsize=None)
    def small(resolution: int = 32, n_train: int = 64, n_test: int = 16):
        return original(resolution, 64, 16)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(captions, "load_captions", small)
        out = tmp_path_factory.mktemp("t2i-distill") / "teacher"
        train_teacher(captions_config(), out)
        yield out


@pytest.fixture(scope="module")
def students(teacher, tmp_path_factory):
    """Each method's exported students of the captions teacher, distilled once per module (method -> folders)."""
    done: dict[str, list] = {}

    def get(method: str) -> list:
        if method not in done:
            done[method] = distill(_cfg(teacher, method), tmp_path_factory.mktemp(method))
        return done[method]

    return get


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def user_pipeline(tmp_path_factory):
    """A user's random tiny StableDiffusionPipeline folder: no fewstep.json, no dataset."""
    from fewstep.models.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("user") / "sd")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_distils_the_captions_teacher_into_a_text_pipeline(teacher, students, method):
    paths = students(method)
    base = load_model(teacher)
    for path in paths:
        model = load_model(path)
        info = json.loads((path / "fewstep.json").read_text())
        assert info["kind"] == "latent" and info["shape"] == [4, 16, 16] and info["dataset"] == "captions"
        assert info["extra"]["distill"]["cfg_scale"] == 3.0  # the teacher's recorded scale, folded in
        assert info["acceleration"]["cfg_scale"] == 1.0  # so the student samples without guidance
        assert model.prompt_encoder is not None and model.network.__class__.__name__ == "UNet2DConditionModel"
        changed = [n for (n, a), b in zip(base.network.named_parameters(), model.network.parameters())
                   if not torch.equal(a, b)]
        assert changed, f"{path.name}: the student equals its teacher"
        out = sample_model(model, 2, PlanSettings(steps=1), prompts=PROMPTS)
        images = model.decode(out.samples)
        assert out.nfe == 1 and images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert (paths[-1].parent / "samples" / f"{paths[-1].name}.png").exists()  # a decoded preview on captions


@pytest.mark.parametrize("method, steps", [("consistency", [1]), ("reflow", [1, 2])])
def test_text_students_sample_in_stable_diffusion_pipeline_as_in_fewstep(students, method, steps):
    """StableDiffusionPipeline.from_pretrained(student) with guidance_scale=1: LCMScheduler for the consistency
    student (one step: LCM re-noises from the pipeline's generator), EulerDiscreteScheduler for reflow's."""
    from diffusers import StableDiffusionPipeline

    from tests.test_pipelines import diffusers_images, fewstep_images

    (path,) = students(method)
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe.scheduler).__name__ == ("LCMScheduler" if method == "consistency" else "EulerDiscreteScheduler")
    for n in steps:
        _, x, _, ours = fewstep_images(path, n, 1.0)
        theirs = diffusers_images(pipe, x, n, 1.0)
        assert ((theirs > -1) & (theirs < 1)).float().mean() > 0.5  # not saturated: the comparison means something
        assert (ours.clamp(-1, 1) - theirs).abs().max() < 1e-4, n


@pytest.mark.parametrize("negative", ["", "a small red circle on the left"])
def test_the_teacher_target_is_cfg_of_the_captions_against_the_null_prompt(teacher, tmp_path, negative):
    """A batch holds the teacher's latents of its images and the encoding of their captions; the guided teacher is
    u + s (c - u) with u on the null prompt (the empty one, or --negative-prompt), s the recorded scale."""
    from fewstep.distill.common import DistillContext

    ctx = DistillContext(_cfg(teacher, "progressive", negative_prompt=negative), tmp_path)
    assert ctx.cfg.cfg_scale == 3.0 and "cfg_scale = 3.0" in (tmp_path / "config.toml").read_text()
    data, model = ctx.data, ctx.teacher
    assert torch.allclose(ctx.train_items()[:4], model.encode(data.train[:4]), atol=1e-5)
    batch = ctx.source(ctx.train_items(), ctx.train_conditions()).batch(0, 4, 0, 1, torch.device("cpu"))
    sigma = torch.tensor([0.5, 1.0, 2.0, 5.0])
    x = batch.x + sigma[:, None, None, None] * batch.randn(4, 16, 16)
    with torch.no_grad():
        target = ctx.guided_teacher()(x, sigma, batch.cond)
        c = model.denoiser(x, sigma, model.encode_prompts(batch.text))
        u = model.denoiser(x, sigma, model.encode_prompts([negative] * 4))
    assert (target - (u + 3.0 * (c - u))).abs().max() < 1e-4
    assert (c - u).abs().max() > 1e-3  # the captions condition the teacher
    explicit = _cfg(teacher, "progressive", cfg_scale=1.5)
    assert explicit.cfg_scale == 1.5
    assert _cfg(teacher, "progressive", cfg_scale=1.0).cfg_scale == 1.0  # an explicit 1 folds in no guidance
    assert build_plan(model, PlanSettings()).cfg_scale == 3.0  # sampling: unset = the record's, 1 = unguided
    assert build_plan(model, PlanSettings(cfg_scale=1.0)).cfg_scale == 1.0


@pytest.mark.parametrize("method", DATA_FREE)
def test_data_free_methods_distil_a_users_pipeline_on_a_prompts_file(user_pipeline, prompts_file, tmp_path, method):
    paths = distill(_cfg(user_pipeline, method, prompts=str(prompts_file), dmd_gan_weight=0.0 if method == "dmd2"
                         else None), tmp_path)
    (path,) = paths
    info = json.loads((path / "fewstep.json").read_text())
    assert info["extra"]["distill"]["cfg_scale"] == 7.5 and info["extra"]["distill"]["prompts"] == str(prompts_file)
    model = load_model(path)
    out = sample_model(model, 2, PlanSettings(steps=2), prompts=PROMPTS)
    assert out.nfe == 2 and model.decode(out.samples).shape == (2, 3, 16, 16)
    assert (tmp_path / "samples" / "model.png").exists()


def test_dmd2_regression_term_on_prompts(user_pipeline, prompts_file, tmp_path):
    """DMD's regression term on a text teacher: the pairs are generated from the prompts file with the folded CFG and
    their prompts' encodings ride in the generator's one pass."""
    (path,) = distill(_cfg(user_pipeline, "dmd2", prompts=str(prompts_file), dmd_gan_weight=0.0,
                           dmd_regression_weight=0.5, dmd_regression_pairs=4, dmd_fake_updates=1), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss_generator"] for r in rows if "loss_generator" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert sample_model(load_model(path), 2, PlanSettings(steps=1), prompts=PROMPTS).nfe == 1


def test_a_users_pipeline_distils_on_a_folder_of_captioned_images(user_pipeline, tmp_path):
    """--dataset folder:DIR (a .txt caption beside each image) read at the teacher's image size, trained on as latents
    with the captions' encoding."""
    from fewstep.distill.common import DistillContext
    from tests.test_data_formats import colour_folder

    root = colour_folder(tmp_path / "images", 12, size=(24, 24), captions="txt")
    ctx = DistillContext(_cfg(user_pipeline, "progressive", dataset=f"folder:{root}"), tmp_path / "ctx")
    assert ctx.data.shape == (3, 16, 16) and ctx.train_conditions()[0].startswith("item ")
    assert ctx.train_items().shape == (len(ctx.data.train), 4, 8, 8)
    (path,) = [p for p in distill(_cfg(user_pipeline, "progressive", dataset=f"folder:{root}"), tmp_path / "run")
               if p.name == "model"]
    info = json.loads((path / "fewstep.json").read_text())
    assert info["dataset"].startswith("folder:") and info["extra"]["distill"]["method"] == "progressive"


def test_lora_student_of_the_captions_teacher_loads_into_its_pipeline(teacher, tmp_path):
    """--lora-rank on the UNet2DConditionModel: only the attention projections change, and
    pipe.load_lora_weights(student) on the teacher's pipeline is the merged student."""
    from diffusers import StableDiffusionPipeline

    (path,) = distill(_cfg(teacher, "consistency", lora_rank=2, lora_alpha=4, lr=0.05), tmp_path)
    base, student = load_model(teacher).network, load_model(path).network
    changed = {n for (n, a), b in zip(base.named_parameters(), student.parameters()) if not torch.equal(a, b)}
    assert changed and all(n.split(".")[-2] in ("to_q", "to_k", "to_v", "0") for n in changed)
    pipe = StableDiffusionPipeline.from_pretrained(teacher / "model", safety_checker=None, local_files_only=True)
    x, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([999, 500])
    text = load_model(path).encode_prompts(PROMPTS).text
    with torch.no_grad():
        plain = pipe.unet(x, t, text).sample
        pipe.load_lora_weights(path)
        loaded, ours = pipe.unet(x, t, text).sample, student(x, t, text).sample
    assert (loaded - ours).abs().max() < 1e-4 and (ours - plain).abs().max() > 1e-4


@pytest.mark.parametrize("case, message", [
    ("prompts_pixels", "--prompts needs a text-to-image teacher (one with a text encoder); this one is unconditional"),
    ("negative_pixels", "--negative-prompt needs a text-to-image teacher"),
    ("needs_data", "progressive distillation trains on captioned images (e.g. folder:DIR with a .txt caption per "
                   "image); this teacher records no fewstep dataset: pass --dataset"),
    ("prompts_for_data", "consistency distillation trains on captioned images, not on --prompts"),
    ("no_prompts", "sid on a text-to-image teacher needs prompts: pass --prompts FILE"),
    ("uncaptioned", "dataset digits has no captions"),
    ("empty_prompts", "holds no prompts; write one prompt per line"),
    ("feature", "--distance feature reads an image classifier's features"),
])
def test_bad_text_distillation_input_is_one_line_and_exit_2(teacher, user_pipeline, prompts_file, tmp_path, capsys,
                                                            case, message):
    from tests.test_diffusers_adapter import save_pipeline

    (tmp_path / "empty.txt").write_text("\n\n")
    if case.endswith("pixels"):
        save_pipeline(tmp_path / "pixels")
    teacher_of = {"prompts_pixels": tmp_path / "pixels", "negative_pixels": tmp_path / "pixels",
                  "uncaptioned": teacher, "feature": teacher}
    extra = {"prompts_pixels": ["--method", "reflow", "--prompts", str(prompts_file)],
             "negative_pixels": ["--method", "reflow", "--negative-prompt", "a cat"],
             "needs_data": ["--method", "progressive"],
             "prompts_for_data": ["--method", "consistency", "--prompts", str(prompts_file)],
             "no_prompts": ["--method", "sid"],
             "uncaptioned": ["--method", "consistency", "--dataset", "digits"],
             "empty_prompts": ["--method", "sid", "--prompts", str(tmp_path / "empty.txt")],
             "feature": ["--method", "consistency", "--distance", "feature"]}[case]
    argv = ["distill", "--teacher", str(teacher_of.get(case, user_pipeline)), "--preset", "tiny", "--device", "cpu",
            "--out", str(tmp_path / "run"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "fewstep" in line or "Traceback" in line]
    assert len(said) == 1 and message in said[0], err
