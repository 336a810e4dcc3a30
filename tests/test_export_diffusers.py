"""Every method's exported student, loaded with plain diffusers, samples what fewstep samples (~1e-4)."""

from __future__ import annotations

import json

import pytest
import torch

from fewstep.core.noise import sample_seed
from fewstep.distill import METHODS, distill, resolve_distill_config
from fewstep.models.io import load_model
from fewstep.plan import PlanSettings
from fewstep.sample import sample_model

STEPS = "1,2,4"
N = 2  # samples per comparison


def _distill(teacher, method: str, out, extra: dict | None = None) -> list:
    cfg = resolve_distill_config({"teacher": str(teacher), "method": method, "preset": "tiny", "device": "cpu",
                                  "train_steps": 2, "steps": STEPS, "monitor_n": 0,
                                  **({"pd_start_steps": 4} if method in ("progressive", "lightning") else {}),
                                  **(extra or {})})
    return distill(cfg, out)


def _student_steps(path) -> list[int]:
    info = json.loads((path / "fewstep.json").read_text())
    return info["extra"]["distill"]["steps"]


@pytest.fixture(scope="module")
def vp_teacher(tmp_path_factory):
    from tests.test_diffusers_adapter import save_pipeline

    folder = tmp_path_factory.mktemp("vp") / "user"
    save_pipeline(folder, layout="pipeline")
    return folder


def _diffusers_vp(path, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """DDPMPipeline.from_pretrained(student) sampled from fewstep's noise: (the pipeline's own images in [0, 1],
    its loop's unclamped result). The loop takes its per-step noise (LCM's re-noising) from fewstep's step stream;
    the pipeline's own call draws it from the initial generator, so its images are compared at one step only."""
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(path).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    images, loops = [], []
    cfg = pipe.unet.config
    for i in range(N):
        start = torch.Generator().manual_seed(sample_seed(0, i, 0))
        image = pipe(generator=start, num_inference_steps=steps, output_type="np").images
        images.append(torch.from_numpy(image).permute(0, 3, 1, 2))
        start.manual_seed(sample_seed(0, i, 0))
        per_step = torch.Generator().manual_seed(sample_seed(0, i, 1))
        x = torch.randn((1, cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=start)
        pipe.scheduler.set_timesteps(steps)
        with torch.no_grad():
            for t in pipe.scheduler.timesteps:
                x = pipe.scheduler.step(pipe.unet(x, t).sample, t, x, generator=per_step).prev_sample
        loops.append(x)
    return torch.cat(images), torch.cat(loops)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_vp_students_sample_in_diffusers_as_in_fewstep(vp_teacher, tmp_path, method):
    """A user's UNet2DModel teacher: each student folder is a DDPMPipeline whose scheduler reproduces fewstep."""
    paths = _distill(vp_teacher, method, tmp_path / method, {"dataset": "shapes"})
    assert paths
    for path in paths:
        index = json.loads((path / "model_index.json").read_text())
        assert index["_class_name"] == "DDPMPipeline" and index["scheduler"][1] in ("LCMScheduler", "DDIMScheduler")
        for steps in _student_steps(path):
            ours = sample_model(path, N, PlanSettings(steps=steps), seed=0)
            assert ours.nfe == steps
            images, theirs = _diffusers_vp(path, steps)
            diff = (ours.samples - theirs).abs().max() / theirs.abs().max().clamp(min=1)
            assert diff < 1e-5, (path.name, steps, float(diff))  # relative: a 2-step-trained student's x is ~500
            if steps == 1 or index["scheduler"][1] != "LCMScheduler":
                assert ((ours.samples / 2 + 0.5).clamp(0, 1) - images).abs().max() < 1e-4


def test_vp_student_grid_is_diffusers_trailing(vp_teacher, tmp_path):
    """The recorded sigmas are those of diffusers' trailing timesteps; without it 1 step gave garbage (issue 16)."""
    from diffusers import DDIMScheduler

    (path,) = _distill(vp_teacher, "reflow", tmp_path, {"dataset": "shapes"})
    info = load_model(path).info
    sched = DDIMScheduler.from_pretrained(path / "scheduler")
    sched.set_timesteps(4)
    assert sched.timesteps.tolist() == [999, 749, 499, 249] and info.sampler["schedule"] == "trailing"
    sigmas = ((1 - sched.alphas_cumprod[999]) / sched.alphas_cumprod[999]).sqrt()
    assert abs(info.sampler["sigmas"][0] - float(sigmas)) < 1e-4 * float(sigmas)


@pytest.mark.parametrize("method", [*sorted(METHODS), "sid-init-sigma"])
def test_edm_students_sample_in_diffusers_as_in_fewstep(tiny_teacher, tmp_path, method):
    """A fewstep EDM teacher: UNet2DModel + EDMEulerScheduler on the student's ramp reproduce its Euler-sampled
    students at every step count and its consistency-sampled students at one step (a single denoising; diffusers has
    no c_skip for a consistency student's boundary, which at sigma_max adds ~c_skip x ~ 1e-4)."""
    from diffusers import EDMEulerScheduler, UNet2DModel

    from fewstep.samplers import initial_latents

    extra = {"sid_init_sigma": 2.5} if method == "sid-init-sigma" else None  # its ramp starts at 2.5, not 80
    for path in _distill(tiny_teacher, method.removesuffix("-init-sigma"), tmp_path / method, extra):
        model = load_model(path)
        unet = UNet2DModel.from_pretrained(path, use_safetensors=True)
        steps_list = _student_steps(path) if model.info.sampler["name"] == "euler" else [1]
        for steps in steps_list:
            sched = EDMEulerScheduler.from_pretrained(path)
            sched.set_timesteps(sigmas=torch.linspace(0, 1, steps + 1)[:steps])  # fewstep's karras_trailing ramp
            labels = torch.arange(N) % 10
            ours = sample_model(model, N, PlanSettings(steps=steps), seed=0, cond=labels)
            x = initial_latents(model.denoiser, 0, range(N), model.info.shape, sched.sigmas[0])
            with torch.no_grad():
                for t in sched.timesteps:
                    x = sched.step(unet(sched.scale_model_input(x, t), t, class_labels=labels).sample, t, x).prev_sample
            tol = 1e-3 if model.info.consistency else 1e-4
            assert (ours.samples - x).abs().max() < tol * max(1.0, float(x.abs().max())), (path.name, steps)


@pytest.mark.parametrize("sampler, steps", [("euler", [1, 2, 4]), ("consistency", [1])])
def test_pipeline_teacher_student_is_a_stable_diffusion_pipeline(tmp_path, sampler, steps):
    """A Stable-Diffusion-layout teacher: the student folder is a whole StableDiffusionPipeline (text encoder,
    tokenizer and VAE hard-linked from the teacher) that samples what fewstep samples. LCM re-noises from the
    pipeline's generator, so the consistency student is compared at one step."""
    from diffusers import StableDiffusionPipeline

    from fewstep.distill.common import DistillContext
    from fewstep.models.tiny import save_tiny_pipeline
    from tests.test_pipelines import diffusers_images, fewstep_images

    teacher = save_tiny_pipeline(tmp_path / "teacher")
    cfg = resolve_distill_config({"teacher": str(teacher), "method": "progressive", "device": "cpu",
                                  "preset": "tiny"})
    ctx = DistillContext(cfg, tmp_path / "run")
    student = ctx.make_student()
    if sampler == "consistency":
        student.boundary_scaling = 10.0
    path = ctx.export(student, "model", sampler, steps, "test")
    assert (path / "vae" / "diffusion_pytorch_model.safetensors").stat().st_ino == (
        teacher / "vae" / "diffusion_pytorch_model.safetensors").stat().st_ino
    assert not (tmp_path / "run" / ".model.partial").exists()
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    for n in steps:
        _, x, _, ours = fewstep_images(path, n, 1.0)
        theirs = diffusers_images(pipe, x, n, 1.0)
        assert (ours.clamp(-1, 1) - theirs).abs().max() < 1e-4, n


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_trailing_grid_nests_for_progressive_rounds(n):
    """trailing(2n) holds trailing(n) at its even points, as a progressive round needs; it is a discrete grid."""
    from diffusers import DDIMScheduler

    from fewstep.core.denoiser import SigmaRange
    from fewstep.core.schedules import make_schedule
    from fewstep.models.diffusers_adapter import discrete_sigmas

    sigmas = discrete_sigmas(DDIMScheduler().alphas_cumprod).float()
    rng = SigmaRange(float(sigmas.min()), float(sigmas.max()), discrete=sigmas)
    assert torch.equal(make_schedule("trailing", 2 * n, rng)[::2], make_schedule("trailing", n, rng))
    with pytest.raises(Exception, match="discrete"):
        make_schedule("trailing", n, SigmaRange(0.002, 80.0))


def test_sid_init_sigma_is_refused_on_a_vp_teacher(vp_teacher, tmp_path):
    """A VP teacher's students start from diffusers' trailing timesteps (their export depends on it): one line."""
    from fewstep.core.errors import UserError

    with pytest.raises(UserError, match="--sid-init-sigma: a diffusers VP teacher") as error:
        _distill(vp_teacher, "sid", tmp_path, {"dataset": "shapes", "sid_init_sigma": 2.5})
    assert "\n" not in str(error.value)
