"""What every distillation method shares: the teacher, the student, training stages through the one loop, export."""

from __future__ import annotations

import copy
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from fewstep.config import DistillConfig
from fewstep.core.cond import Cond, CondLike
from fewstep.core.denoiser import backbone
from fewstep.core.errors import UserError
from fewstep.core.files import read_json, remove_temporaries, replaced_folder
from fewstep.core.precond import ConsistencyBoundary, EDMPrecond
from fewstep.core.schedules import make_schedule
from fewstep.data import Dataset, load_recorded, read_prompts
from fewstep.distill.text import check_text_teacher, cycled, latent_items, preview_on_prompts, prompts_digest
from fewstep.models.info import image_size
from fewstep.models.io import LoadedModel, load_model, save_model
from fewstep.models.networks import arch_of, build_network, call_network, disable_label_dropout
from fewstep.samplers.cfg import CFGDenoiser
from fewstep.samplers.ode import ODE_SOLVERS
from fewstep.data.batches import TensorSource
from fewstep.train.checkpoint import latest_checkpoint
from fewstep.train.guard import check_export
from fewstep.train.loop import Method, make_accelerator, run_loop
from fewstep.train.teacher import preview

STUDENT_SCHEDULE = "karras_trailing"  # students sample on this grid (core/schedules.py) ...
VP_STUDENT_SCHEDULE = "trailing"  # ... and students of a diffusers VP U-Net on diffusers' trailing timesteps
VP_UNETS = ("UNet2DModel", "UNet2DConditionModel")  # exported as diffusers pipelines (models/student_folder.py)
# a text teacher's student samples without guidance unless asked: the teacher's (cfg_scale) is folded into it
TEXT_STUDENT_GUIDANCE = {"cache": None, "guidance": None, "cfg_scale": 1.0, "cfg_interval": None}
MONITOR_SEED = 7_000_003  # the divergence guard's recall samples: seeds the ruler (seed 0 upwards) never uses


def parse_steps(text: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4] (sorted, unique, each >= 1)."""
    try:
        steps = sorted({int(v) for v in str(text).split(",") if v.strip()})
    except ValueError:
        raise UserError(f"--steps takes student step counts like 1,2,4, got {text!r}") from None
    if not steps or steps[0] < 1:
        raise UserError(f"--steps takes student step counts >= 1, got {text!r}")
    return steps


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory so far: CUDA's max allocated on a GPU, else the peak resident set (MiB)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _fresh(net: nn.Module) -> nn.Module:
    fresh = type(net).from_config(net.config)
    if arch_of(fresh) == "dit":
        disable_label_dropout(fresh)
    return fresh


def check_empty(out: Path) -> None:
    """A one-line error when `out` holds anything but its lock: distilling there would overwrite it."""
    from fewstep.runlock import LOCK_NAME

    held = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) if out.is_dir() else []
    if held:
        raise UserError(f"{out} is not empty (it holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''}); "
                        "pass --resume to continue a run there, --force to distill into it anyway, or a new --out")


class DistillContext:
    """One distillation run: its config, teacher, data, accelerator and output folder; trains stages, exports."""

    def __init__(self, cfg: DistillConfig, out: str | Path, resume: bool = False, stop_at: int | None = None):
        self.cfg, self.out, self.stop_at = cfg, Path(out), stop_at
        if not cfg.teacher:
            raise UserError("--teacher is required: a run directory, fewstep model folder or diffusers folder")
        if any(self.out.glob("*/checkpoints/step-*")) and not resume:
            raise UserError(f"{self.out} already holds a run; pass --resume to continue it or choose a new --out")
        self.steps = parse_steps(cfg.steps)
        if cfg.solver not in ODE_SOLVERS:
            raise UserError(f"--solver must be one of {', '.join(ODE_SOLVERS)}, got {cfg.solver!r}")
        self.acc = make_accelerator(cfg.device, cfg.mixed_precision)
        self.device = self.acc.device
        self.teacher: LoadedModel = load_model(cfg.teacher, self.device)
        self.teacher.denoiser.requires_grad_(False).eval()
        info = self.teacher.info
        resolution = info.image_shape[-1] if info.kind == "latent" and info.image_shape else image_size(info)
        self.data: Dataset | None = load_recorded(info.data, info.dataset, cfg.dataset or None, resolution)
        check_text_teacher(self.teacher, self.data, cfg.prompts, cfg.negative_prompt)
        if self.data is not None and not self.text and list(self.data.shape) != list(info.shape):
            raise UserError(f"dataset {self.data.spec or self.data.name} has items of shape {list(self.data.shape)}, "
                            f"the teacher {info.shape}")
        if cfg.cfg_scale != 1.0 and not (info.num_classes or self.text):
            raise UserError("--cfg-scale needs a class-conditional or text-to-image teacher; this one is "
                            "unconditional")
        self.prompts: list[str] | None = read_prompts(cfg.prompts) if cfg.prompts else None
        self._latents: torch.Tensor | None = None
        if cfg.lora_rank and (cfg.lora_rank < 0 or cfg.student_preset or cfg.init != "teacher"):
            raise UserError("--lora-rank takes a rank >= 1 and trains adapters on the teacher's own network; "
                            "drop --student-preset and --init")
        self.seconds = 0.0  # distillation wall-clock, summed over stages (and teacher pair generation)
        self.top_sigma: float | None = None  # a method's own first noise level for its students (SiD's init_sigma)
        if self.acc.is_main_process:
            from fewstep.config import to_toml

            self.out.mkdir(parents=True, exist_ok=True)
            remove_temporaries(self.out)
            (self.out / "config.toml").write_text(to_toml(cfg.flat()))

    @property
    def options(self):
        """The method's options (fewstep.distill.METHODS[method].options)."""
        return self.cfg.options

    @property
    def sigma_range(self):
        return self.teacher.denoiser.sigma_range

    @property
    def text(self) -> bool:
        """Whether the teacher is a text-to-image model (a prompt encoder; its items are latents)."""
        return self.teacher.prompt_encoder is not None

    def require_data(self) -> Dataset:
        """The training data, or a one-line error naming --dataset."""
        method = self.cfg.method
        if self.text and self.prompts is not None:
            raise UserError(f"{method} distillation trains on captioned images, not on --prompts (a data-free "
                            "method's option): drop --prompts and pass --dataset")
        if self.data is None:
            what = "captioned images (e.g. folder:DIR with a .txt caption per image)" if self.text else "data"
            raise UserError(f"{method} distillation trains on {what}; this teacher records no fewstep dataset: "
                            "pass --dataset")
        return self.data

    def train_items(self) -> torch.Tensor:
        """The items the student trains on: the data's, or for a text teacher their latents (encoded once)."""
        data = self.require_data()
        if not self.text:
            return data.train
        if self._latents is None:
            self._latents = latent_items(self.teacher, data)
        return self._latents

    def train_conditions(self) -> torch.Tensor | list[str] | None:
        """The training items' conditions: their captions (text teacher), class labels (class-conditional), or None."""
        data = self.require_data()
        if self.text:
            return data.train_text
        return data.train_labels if self.teacher.info.num_classes else None

    def prompt_pool(self) -> list[str]:
        """The prompts a data-free method conditions a text teacher on: --prompts, else the data's captions."""
        if self.prompts is not None:
            return self.prompts
        if self.data is None:
            raise UserError(f"{self.cfg.method} on a text-to-image teacher needs prompts: pass --prompts FILE (one "
                            "prompt per line) or --dataset of captioned images")
        return self.data.train_text

    def generation_conditions(self, n: int) -> torch.Tensor | list[str] | None:
        """The conditions of n generated items: prompts cycled (text), labels cycling over the classes, or None."""
        if self.text:
            return cycled(self.prompt_pool(), n)
        classes = self.teacher.info.num_classes
        return torch.arange(n) % classes if classes else None

    def encode_prompts(self, prompts: list[str]) -> Cond:
        """The teacher's condition of these prompts, its null condition the run's negative prompt (default: empty)."""
        return self.teacher.encode_prompts(prompts, self.cfg.negative_prompt or None)

    def example_condition(self) -> CondLike:
        """A condition of two rows for probing a network (a text teacher's empty prompts), else None."""
        return self.encode_prompts(["", ""]) if self.text else None

    def condition(self, conditions: torch.Tensor | list[str] | None) -> CondLike:
        """What the denoisers take for these conditions: prompts encoded, labels as they are."""
        return self.encode_prompts(conditions) if isinstance(conditions, list) else conditions

    def conditions_digest(self, conditions: torch.Tensor | list[str] | None) -> str:
        """A cache key's digest of conditions (and, for prompts, the null condition)."""
        from fewstep.metrics.cache import tensor_digest

        if isinstance(conditions, list):
            return prompts_digest(conditions, self.cfg.negative_prompt)
        return tensor_digest(conditions)

    def source(self, items: torch.Tensor, conditions: torch.Tensor | list[str] | None) -> TensorSource:
        """The batches of a stage: rows of items with their labels, or with their captions' prompt encoding."""
        if isinstance(conditions, list):
            return TensorSource(items, seed=self.cfg.seed, text=conditions, encode_text=self.encode_prompts)
        return TensorSource(items, conditions, self.cfg.seed)

    def preview(self, student: nn.Module, path: Path, sampler: str, sigmas: torch.Tensor) -> None:
        """A preview grid of the student: on the first prompts, decoded (text teacher), else as a teacher's."""
        if not self.text:
            if self.data is not None:
                preview(student, self.data, path, sampler, sigmas)
        elif self.prompts is not None or self.data is not None:
            preview_on_prompts(self.teacher, student, self.prompts or self.data.train_text, self.cfg.negative_prompt,
                               path, sampler, sigmas)

    def guided_teacher(self) -> nn.Module:
        """The teacher denoiser, with classifier-free guidance folded in when cfg_scale != 1."""
        d = self.teacher.denoiser
        return CFGDenoiser(d, self.cfg.cfg_scale) if self.cfg.cfg_scale != 1.0 else d

    @property
    def vp_unet(self) -> bool:
        """Whether the teacher is a diffusers VP U-Net: its students are diffusers pipelines on trailing timesteps."""
        from fewstep.models.diffusers_adapter import DiffusersVPDenoiser

        return isinstance(self.teacher.denoiser, DiffusersVPDenoiser) and self.teacher.info.network_class in VP_UNETS

    @property
    def schedule(self) -> str:
        """The name of the grid students sample on."""
        return VP_STUDENT_SCHEDULE if self.vp_unet else STUDENT_SCHEDULE

    def student_schedule(self, steps: int) -> torch.Tensor:
        """The sigmas a student samples with at `steps` steps (from top_sigma where a method sets one)."""
        rng = self.sigma_range if self.top_sigma is None else replace(self.sigma_range, sigma_max=self.top_sigma)
        return make_schedule(self.schedule, steps, rng)

    def make_student(self) -> nn.Module:
        """A trainable copy of the teacher denoiser (default), re-initialised (init=scratch), or a smaller preset."""
        cfg, teacher = self.cfg, self.teacher
        torch.manual_seed(cfg.seed)
        if cfg.student_preset:
            if teacher.info.parameterization != "edm":
                raise UserError("--student-preset builds a fewstep network; this teacher is a diffusers VP model")
            net = build_network(teacher.info.arch, cfg.student_preset, tuple(teacher.info.shape), teacher.info.num_classes)
            d = teacher.denoiser
            student = EDMPrecond(net, call_network, d.sigma_data, d.sigma_range.sigma_min, d.sigma_range.sigma_max,
                                 d.num_classes)
        elif cfg.init not in ("teacher", "scratch"):
            student = self._student_init(cfg.init)
        else:
            student = copy.deepcopy(teacher.denoiser)
            if cfg.init == "scratch":
                student.network = _fresh(student.network)
        student = student.to(self.device).train().requires_grad_(True)
        if cfg.gradient_checkpointing:
            net = backbone(student)
            if not getattr(net, "_supports_gradient_checkpointing", False):
                raise UserError(f"--gradient-checkpointing: a {type(net).__name__} does not support it")
            net.enable_gradient_checkpointing()
        if cfg.lora_rank:
            from fewstep.distill.lora import add_lora
            add_lora(student, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        return student

    def trainable(self, student: nn.Module) -> nn.Module:
        """A student copy set to train: its LoRA parameters only when it has adapters, else all of them."""
        from fewstep.distill.lora import freeze_base

        return freeze_base(student.train().requires_grad_(True))

    def _student_init(self, path: str) -> nn.Module:
        """A copy of another model's denoiser (e.g. a distilled student to fine-tune) with the teacher's shapes."""
        if not Path(path).exists():
            raise UserError(f"--init must be teacher, scratch or a model folder; {path} does not exist")
        other = load_model(path, self.device)
        mine, theirs = self.teacher.info, other.info
        if list(theirs.shape) != list(mine.shape) or theirs.num_classes != mine.num_classes:
            raise UserError(f"--init {path}: its items {theirs.shape} / {theirs.num_classes} classes do not match the "
                            f"teacher's {mine.shape} / {mine.num_classes}")
        student = other.denoiser
        while isinstance(student, ConsistencyBoundary):  # the method adds its own boundary if it has one
            student = student.inner
        return copy.deepcopy(student)

    def train(self, method: Method, name: str, data: torch.Tensor, conditions: torch.Tensor | list[str] | None,
              sampler: str, steps: int | None = None, label: str = "") -> dict[str, nn.Module]:
        """Run one stage of `method` in out/name through the shared loop; a finished stage just reloads.

        `conditions` are the items' class labels, or their captions (a text teacher: encoded batch by batch).

        The progress bar reads "distill METHOD" and the stage's `label` (e.g. "round 2/5: 8 -> 4 steps").

        Previews and the guard's recall check sample the stage's student in `steps` steps (default: the fewest).
        """
        run_dir = self.out / name
        sigmas = self.student_schedule(steps or self.steps[0])

        def on_sample(step: int, modules: dict[str, nn.Module]) -> None:
            student = modules[method.ema_modules[0]]  # the module that is exported
            self.preview(student, run_dir / "samples" / f"step-{step:07d}.png", sampler, sigmas)

        modules = run_loop(method, self.source(data, conditions), self.cfg.loop(), run_dir, on_sample, self.acc,
                           self.stop_at, self.collapse_monitor(method.ema_modules[0], sampler, sigmas),
                           desc=f"distill {self.cfg.method} {label}".rstrip())
        found = latest_checkpoint(run_dir / "checkpoints")
        if found is not None:
            self.seconds += read_json(found / "state.json", "a checkpoint's state")["train_seconds"]
        return modules

    def collapse_monitor(self, name: str, sampler: str, sigmas: torch.Tensor) -> Callable[[dict], dict] | None:
        """What the guard watches before each checkpoint: precision and recall of `name`'s samples (cfg.monitor_n of
        them, at the fewest student steps) against a fixed held-out reference and, where the data shows it, their
        coverage of its modes (2-D with centres) or classes (labelled images); None when off or without data.
        Off for a text teacher: its samples depend on their prompts, which an unconditional reference does not see
        (fewstep eval measures them per prompt)."""
        n, data = self.cfg.monitor_n, self.data
        if not n or data is None:
            return None
        if self.text:
            if self.acc.is_main_process:
                print("divergence guard: the collapse monitor is off for a text-to-image teacher (samples depend on "
                      "their prompts; measure the student with fewstep eval)", file=sys.stderr)
            return None
        from fewstep.samplers import generate

        info = self.teacher.info
        labels = torch.arange(n) % info.num_classes if info.num_classes else None
        measure = _image_collapse(data, n, labels) if data.kind == "image" else _vector_collapse(data, n)

        def monitor(modules: dict[str, nn.Module]) -> dict[str, float]:
            out = generate(modules[name], info.shape, n, sigmas, sampler, MONITOR_SEED, labels, device=self.device)
            return measure(out.samples.cpu())

        return monitor

    def finished(self) -> bool:
        """False while a simulated kill (stop_at) cut the run short; every process agrees."""
        return self.stop_at is None or self.stop_at >= self.cfg.train_steps

    def export(self, student: nn.Module, name: str, sampler: str, steps: list[int], method: str,
               consistency: dict[str, float] | None = None) -> Path:
        """Save a student into out/name: its network, fewstep.json (sampler, sigmas, teacher) and scheduler config.

        A student of a diffusers VP U-Net is a diffusers pipeline folder whose scheduler reproduces fewstep's
        sampling (models/student_folder.py). The folder is written beside out/name and renamed into place.
        """
        from fewstep.distill.lora import is_lora, merged

        t, lora = self.teacher, is_lora(student)
        net = backbone(merged(student) if lora else student)
        sigmas = self.student_schedule(steps[0])
        info = replace(t.info, arch=arch_of(net), network_class=type(net).__name__, teacher=str(t.path.resolve()),
                       dataset=str(self.data.spec or self.data.name) if self.data is not None else t.info.dataset,
                       data=self.data.spec.record() if self.data is not None and self.data.spec else t.info.data,
                       consistency=consistency, acceleration=dict(TEXT_STUDENT_GUIDANCE) if self.text else None,
                       sigma_max=self.top_sigma or t.info.sigma_max,  # diffusers' scheduler ramp starts there too
                       sampler={"name": sampler, "schedule": self.schedule, "steps": steps[0],
                                "sigmas": [round(float(s), 6) for s in sigmas[:-1]]},
                       extra={"distill": {"method": method, "steps": steps, "cfg_scale": self.cfg.cfg_scale,
                                          "train_steps": self.cfg.train_steps,
                                          "distill_seconds": round(self.seconds, 1),
                                          "student_preset": self.cfg.student_preset or t.info.extra.get("preset", ""),
                                          "teacher_train_seconds": t.info.extra.get("train_seconds"),
                                          "peak_memory_mb": peak_memory_mb(self.device),
                                          "lora": {"rank": self.cfg.lora_rank, "alpha": self.cfg.lora_alpha
                                                   or self.cfg.lora_rank, "targets": self.cfg.lora_targets}
                                          if lora else None,
                                          **({"negative_prompt": self.cfg.negative_prompt, "prompts": self.cfg.prompts}
                                             if self.text else {})}})
        path = self.out / name
        check_export(student, t.info.shape, self.example_condition())
        if self.acc.is_main_process:  # every process holds the same student; one writes it
            with replaced_folder(path) as tmp:
                self._write(tmp, student, net, info, sampler)
                if lora:  # diffusers' LoRA format beside the merged student: pipe.load_lora_weights(folder)
                    from fewstep.distill.lora import save_lora
                    save_lora(tmp, student)
            self.preview(student.eval(), self.out / "samples" / f"{name}.png", sampler, sigmas)
        self.acc.wait_for_everyone()
        return path

    def _write(self, path: Path, student: nn.Module, net: nn.Module, info, sampler: str) -> None:
        """Write the student folder: a diffusers pipeline for a VP U-Net teacher, else a model folder."""
        from fewstep.models.diffusers_folder import scheduler_config

        t = self.teacher
        if not self.vp_unet:
            save_model(path, net, info, scheduler_config(t.path) if t.info.parameterization != "edm" else None)
            return
        from fewstep.models.pipeline_folder import is_text_pipeline
        from fewstep.models.student_folder import student_scheduler, write_pipeline_folder

        text = is_text_pipeline(t.path)
        boundary = getattr(student, "boundary_scaling", None)
        scheduler = student_scheduler(scheduler_config(t.path), sampler, boundary, scales_inputs=text)
        write_pipeline_folder(path, net, scheduler, t.path if text else None)
        save_model(path, None, info)


def _image_collapse(data: Dataset, n: int, labels: torch.Tensor | None) -> Callable[[torch.Tensor], dict]:
    """precision, recall against the first n reference features and, for labelled data, class coverage: the share
    of classes the classifier finds at least half as often as they were asked for (or occur, unconditionally)."""
    from fewstep.metrics.features import feature_network
    from fewstep.metrics.image import class_coverage, precision_recall, reference_features

    net = feature_network(data)
    real = reference_features(data, net)[:n]
    wanted = None
    if data.num_classes:
        wanted = (torch.bincount(labels, minlength=data.num_classes) if labels is not None else
                  torch.bincount(data.train_labels, minlength=data.num_classes) * n / len(data.train_labels))

    def measure(samples: torch.Tensor) -> dict[str, float]:
        precision, recall = precision_recall(net.features(samples), real)
        out = {"precision": precision, "recall": recall}
        if wanted is not None:
            out["coverage"] = class_coverage(net.logits(samples).argmax(1), wanted)
        return out

    return measure


def _vector_collapse(data: Dataset, n: int) -> Callable[[torch.Tensor], dict]:
    """precision, recall against the ruler's reference points and, with mode centres, the share of modes covered."""
    from fewstep.metrics.floor import toy_reference
    from fewstep.metrics.image import precision_recall
    from fewstep.metrics.toy import mode_coverage

    real = toy_reference(data, n)

    def measure(samples: torch.Tensor) -> dict[str, float]:
        precision, recall = precision_recall(samples, real)
        out = {"precision": precision, "recall": recall}
        if data.centres is not None:
            out["coverage"] = mode_coverage(samples, real, data.centres)["modes_covered"]
        return out

    return measure
