"""The one training loop: accelerate, optimisers, EMA, logging, progress, checkpoints, resume, divergence guard.

A method is any object with `modules` (name -> trainable nn.Module, one Adam each), `ema_modules` (names to
average) and `losses(batch) -> {name: loss}` (a module whose loss is absent is not stepped); optional
`state_modules` (name -> nn.Module the method updates itself, e.g. a consistency target network) are checkpointed
with the rest, optional `update_every` (name -> k) steps a module's optimiser only on every k-th step (two time-scale
updates), optional `lr_scale` (name -> factor) multiplies a module's learning rate (a discriminator's), optional
`adam_betas` (name -> (beta1, beta2)) replaces Adam's default (0.9, 0.999) (SiD's beta1 = 0), and optional
`diverging(losses) -> reason | None` reports trouble only the method can see (a discriminator
that wins). The loop never branches on what the method is.

The divergence guard rolls back to the last checkpoint from before the bad step, logged, when a loss is
non-finite or explodes (|loss| above `explode_factor` times its median over the last 100 steps, at least 0.01),
when the method reports trouble for `guard_patience` consecutive steps, or when any value of `monitor` (what
collapse looks like: the EMA model's precision, recall and mode or class coverage against a fixed held-out reference,
checked before every checkpoint is written) falls `collapse_drop` below its best value in the run.
A checkpoint (and the end of the run) is kept only when every weight is finite and the losses of the next batch
are finite (train/guard.py). Each roll-back halves the learning rate again (x0.5, x0.25, ...) and moves the batch
stream's seed (`reseed`, saved in the checkpoint so a resume stays bit-exact), so a retry does not replay the batches
that blew up; after `max_rollbacks` roll-backs the run stops with one line.
"""

from __future__ import annotations

import json
import math
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from fewstep.config import LR_FLOOR, GuardConfig, LoopConfig
from fewstep.core.device import check_device
from fewstep.core.errors import UserError
from fewstep.core.files import append_json_lines, read_json_lines, remove_temporaries
from fewstep.data.batches import Batch, BatchSource
from fewstep.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from fewstep.train.ema import EMA
from fewstep.train.guard import Diverged, nonfinite_loss, nonfinite_module, reseeded


class Method(Protocol):
    modules: dict[str, nn.Module]
    ema_modules: tuple[str, ...]

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]: ...


class StepBoundaryInterrupt:
    """While active, SIGINT only raises a flag the loop checks between steps; a second Ctrl-C interrupts at once."""

    def __enter__(self) -> Callable[[], bool]:
        self.flag, self.previous = False, None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return lambda: self.flag

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag = True
        signal.signal(signal.SIGINT, self.previous)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class TrainingInterrupted(Exception):
    """Ctrl-C: the loop saved a checkpoint at the last finished step before stopping."""


def make_accelerator(device: str, mixed_precision: str):
    """An Accelerator for device auto | cpu | cuda[:N] and precision no | bf16 | fp16."""
    from accelerate import Accelerator

    if mixed_precision not in ("no", "bf16", "fp16"):
        raise UserError(f"mixed_precision must be no, bf16 or fp16, got {mixed_precision!r}")
    check_device(device)
    # auto on a machine without CUDA must say cpu=True: otherwise accelerate ignores torchrun's processes, and each
    # one runs alone as the main process on the same run folder
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


def _lr(config: LoopConfig, step: int, scale: float) -> float:
    warm_up = min(1.0, (step + 1) / max(config.lr_warmup_steps, 1))
    decay = 1.0
    if config.lr_decay == "cosine":
        done = min(step / max(config.steps - 1, 1), 1.0)
        decay = LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * done))
    return config.lr * scale * warm_up * decay


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step; resuming drops lines past the resumed step."""

    def __init__(self, path: Path, resume_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [r for r in read_json_lines(path, "a metrics log") if r.get("step", 0) <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            append_json_lines(self.path, [record])


Monitor = Callable[[dict[str, nn.Module]], dict[str, float]]  # name -> value, higher is better


@dataclass
class TrainState:
    """Everything a checkpoint holds: the trained modules, their optimisers, EMAs and the method's own state."""

    raw: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    emas: dict[str, EMA]
    kept: dict[str, nn.Module]

    def trained(self) -> dict[str, nn.Module]:
        """Each module as it would be exported: its EMA where it has one, else the raw module."""
        return {n: self.emas[n].module if n in self.emas else m for n, m in self.raw.items()}


def save_state(state: TrainState, ckpt_dir: Path, step: int, extra: dict[str, Any], keep: int, acc: Any) -> None:
    """Checkpoint `state` at `step` (main process writes; every process waits for it)."""
    acc.wait_for_everyone()
    if acc.is_main_process:
        sds = {n: m.state_dict() for n, m in state.raw.items()}
        sds |= {f"{n}-ema": e.module.state_dict() for n, e in state.emas.items()}
        sds |= {f"{n}-state": m.state_dict() for n, m in state.kept.items()}
        save_checkpoint(ckpt_dir, step, sds, {n: o.state_dict() for n, o in state.optimizers.items()}, extra, keep)
    acc.wait_for_everyone()


def restore_state(state: TrainState, path: Path) -> tuple[int, dict[str, Any]]:
    """Load a checkpoint into `state`; its step and extra state."""
    step, sds, opt_sds, extra = load_checkpoint(path)
    try:
        for n, module in state.raw.items():
            module.load_state_dict(sds[n])
            state.optimizers[n].load_state_dict(opt_sds[n])
        for n, ema in state.emas.items():
            ema.module.load_state_dict(sds[f"{n}-ema"])
        for n, module in state.kept.items():
            module.load_state_dict(sds[f"{n}-state"])
    except KeyError as e:
        raise UserError(f"checkpoint {path} is unreadable (it has no {e} weights); delete it to resume from an older "
                        "one") from None
    except (RuntimeError, ValueError) as e:
        raise UserError(f"checkpoint {path} does not fit this run ({str(e).splitlines()[0]}); "
                        "delete it or start a new --out") from None
    return step, extra


def run_loop(method: Method, source: BatchSource, config: LoopConfig, run_dir: Path,
             on_sample: Callable[[int, dict[str, nn.Module]], None] | None = None, accelerator=None,
             stop_at: int | None = None, monitor: Monitor | None = None, desc: str = "train") -> dict[str, nn.Module]:
    """Train `method` for config.steps on batches from `source`; returns the EMA (else raw) modules, unwrapped.

    `stop_at` simulates a process killed after that many steps: the loop returns without a final checkpoint.
    `monitor(modules) -> {name: value}` (higher is better) guards every checkpoint against a collapse. `desc` names the
    progress bar (e.g. "train teacher", "distill progressive round 2/5").
    """
    acc = accelerator or make_accelerator("auto", "no")
    main = acc.is_main_process
    if config.batch_size % acc.num_processes:
        raise UserError(f"batch_size {config.batch_size} must be divisible by the {acc.num_processes} processes")
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_temporaries(run_dir)
        remove_temporaries(run_dir / "checkpoints")
    names = list(method.modules)
    raw = {n: method.modules[n] for n in names}
    if hasattr(method, "to"):
        method.to(acc.device)
    betas = dict(getattr(method, "adam_betas", {}))
    optims = {n: torch.optim.Adam(raw[n].parameters(), lr=config.lr, betas=betas.get(n, (0.9, 0.999))) for n in names}
    prepared = acc.prepare(*[raw[n] for n in names], *[optims[n] for n in names])
    models = dict(zip(names, prepared[: len(names)]))
    method.modules.update(models)  # the method calls the wrapped (e.g. DDP) modules, so gradients are all-reduced
    state = TrainState({n: acc.unwrap_model(models[n]) for n in names}, dict(zip(names, prepared[len(names):])), {},
                       dict(getattr(method, "state_modules", {})))
    state.emas = {n: EMA(state.raw[n], config.ema_halflife_steps) for n in method.ema_modules}
    optims = state.optimizers
    every = dict(getattr(method, "update_every", {}))
    lr_scales = dict(getattr(method, "lr_scale", {}))
    ckpt_dir = run_dir / "checkpoints"

    def checkpoint(step: int, extra: dict[str, Any]) -> None:
        save_state(state, ckpt_dir, step, extra, config.keep_checkpoints, acc)

    def restore(path: Path) -> tuple[int, dict[str, Any]]:
        return restore_state(state, path)

    start, extra = 0, {"lr_scale": 1.0, "rollbacks": 0, "reseed": 0, "train_seconds": 0.0, "recent": {}, "troubled": 0}
    found = latest_checkpoint(ckpt_dir)
    if found is not None:
        start, saved = restore(found)
        extra.update(saved)
        if main:
            print(f"resuming from {found} (step {start})", file=sys.stderr)
    log = MetricsLog(run_dir / "metrics.jsonl", start, main)
    for n in names:
        models[n].train()
    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=start, disable=not main, desc=desc, dynamic_ncols=True,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    step, t0, seconds0 = start, time.perf_counter(), extra["train_seconds"]
    clean, last = True, {}
    try:
        with StepBoundaryInterrupt() as interrupted:
            while step < config.steps:
                if interrupted():  # Ctrl-C waits for the step in flight, so a checkpoint never holds half a step
                    raise KeyboardInterrupt
                if stop_at is not None and step >= stop_at:
                    bar.close()
                    return state.trained()
                batch = reseeded(source, extra["reseed"]).batch(step, config.batch_size, acc.process_index,
                                                                acc.num_processes, acc.device)
                lr = _lr(config, step, extra["lr_scale"])
                with acc.autocast():
                    losses = method.losses(batch)
                reduced = {n: acc.reduce(loss.detach().float(), "mean").item() for n, loss in losses.items()}
                reason = _trouble(method, reduced, extra, config.guard)
                if reason:
                    step = _roll_back(step, reason, extra, config.guard, ckpt_dir, restore, log, main)
                    continue
                last.update(reduced)  # the latest value of each loss, also of modules not stepped this time
                clean = False  # from here to the EMA update, a checkpoint would hold half a step
                for n in (n for n in names if step % every.get(n, 1) == 0 and n in losses):
                    for o in optims.values():
                        o.zero_grad(set_to_none=True)
                    acc.backward(losses[n], retain_graph=True)
                    if config.grad_clip > 0:
                        acc.clip_grad_norm_(models[n].parameters(), config.grad_clip)
                    for group in optims[n].param_groups:
                        group["lr"] = lr * lr_scales.get(n, 1.0)
                    try:
                        optims[n].step()
                    except RuntimeError as e:  # e.g. an lr beyond float32 (Adam's "cannot be converted ... overflow")
                        if "overflow" not in str(e):
                            raise
                        raise Diverged(f"step {step + 1}: the update of {n} overflows at lr {lr:g}; nothing exported; "
                                       "lower --lr and train again") from None
                step += 1
                for n, ema in state.emas.items():
                    ema.update(state.raw[n], step)
                clean = True
                extra["train_seconds"] = seconds0 + time.perf_counter() - t0
                bar.update(1)
                if step % config.log_every == 0 or step == config.steps:
                    record = {"step": step, "lr": lr, "seconds": round(extra["train_seconds"], 2),
                              **{f"loss_{n}": v for n, v in last.items()}}
                    log.write(record)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in last.items()}, refresh=False)
                if step == config.steps or (config.checkpoint_every and step % config.checkpoint_every == 0):
                    unkept = (_unhealthy(method, state, reseeded(source, extra["reseed"]), step, config, acc)
                              or (_check(monitor, step, state.trained(), extra, config.guard, log)
                                  if config.checkpoint_every else None))
                    if unkept:
                        step = _roll_back(step, unkept, extra, config.guard, ckpt_dir, restore, log, main)
                        continue
                    if step < config.steps:
                        checkpoint(step, extra)
                if on_sample and main and config.sample_every and step % config.sample_every == 0 and step < config.steps:
                    on_sample(step, state.trained())
    except Diverged:
        bar.close()
        raise
    except KeyboardInterrupt:
        bar.close()
        if not clean:  # a second Ctrl-C inside a step: keep the last good checkpoint rather than save half a step
            raise TrainingInterrupted(f"interrupted inside step {step + 1}; the last checkpoint in {ckpt_dir} "
                                      "is kept") from None
        checkpoint(step, extra)
        raise TrainingInterrupted(f"interrupted at step {step}; checkpoint saved in {ckpt_dir}") from None
    bar.close()
    checkpoint(step, extra)
    return state.trained()


def _trouble(method: Method, reduced: dict[str, float], state: dict[str, Any], guard: GuardConfig) -> str | None:
    """Why this step's losses call for a roll-back (non-finite, exploding, the method's own check), else None."""
    if not all(math.isfinite(v) for v in reduced.values()):
        return f"non-finite loss {reduced}"
    factor = guard.explode_factor
    for n, v in reduced.items():
        recent = state["recent"].setdefault(n, [])  # |loss| of the last 100 steps (adversarial losses go negative)
        scale = max(statistics.median(recent), 1e-2) if len(recent) >= 20 else math.inf
        if factor and abs(v) > factor * scale:
            return f"|loss_{n}| exploded to {abs(v):.4g}, {factor:g}x its recent median {scale:.4g}"
        recent[:] = (recent + [abs(v)])[-100:]
    said = method.diverging(reduced) if hasattr(method, "diverging") else None
    state["troubled"] = state["troubled"] + 1 if said else 0
    if said and state["troubled"] >= guard.patience:
        state["troubled"] = 0
        return f"{said} for {guard.patience} steps"
    return None


def _unhealthy(method: Method, state: TrainState, source: BatchSource, step: int, config: LoopConfig,
               acc: Any) -> str | None:
    """Why the state after `step` must not be kept: a non-finite weight, or non-finite losses of the next batch.

    The probe forks the RNG and restores the method's own state modules, so a healthy run is bit-for-bit unchanged.
    """
    emas = {f"{n} (EMA)": e.module for n, e in state.emas.items()}
    bad = nonfinite_module({**state.raw, **emas, **state.kept})
    if bad:
        return f"non-finite weights in {bad}"
    kept = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in state.kept.items()}
    batch = source.batch(step, config.batch_size, acc.process_index, acc.num_processes, acc.device)
    with torch.random.fork_rng(devices=[]), torch.no_grad(), acc.autocast():
        losses = method.losses(batch)
    for n, sd in kept.items():
        state.kept[n].load_state_dict(sd)
    return nonfinite_loss({n: acc.reduce(v.detach().float(), "mean").item() for n, v in losses.items()})


def _check(monitor: Monitor | None, step: int, modules: dict[str, nn.Module], state: dict[str, Any],
           guard: GuardConfig, log: MetricsLog) -> str | None:
    """Run the monitor before a checkpoint: a value that fell `collapse_drop` below the run's best returns the
    reason, else the values are logged and the bests kept."""
    if monitor is None:
        return None
    values, best = monitor(modules), dict(state.get("best_monitor") or {})
    log.write({"step": step, "event": "monitor", **{k: round(v, 4) for k, v in values.items()}})
    for k, v in values.items():
        if k in best and v < best[k] - guard.collapse_drop:
            return (f"collapse: monitored {k} {v:.3f} fell more than {guard.collapse_drop} below the run's best "
                    f"{best[k]:.3f}")
    state["best_monitor"] = {k: max(v, best.get(k, v)) for k, v in values.items()}
    return None


def _roll_back(step: int, reason: str, state: dict[str, Any], guard: GuardConfig, ckpt_dir: Path,
               restore: Callable[[Path], tuple[int, dict[str, Any]]], log: MetricsLog, main: bool) -> int:
    """Divergence guard: reload the last checkpoint from before `step` with the learning rate halved again and the
    batch stream moved, or stop with one line."""
    found = latest_checkpoint(ckpt_dir, before=step)
    if found is None or state["rollbacks"] >= guard.max_rollbacks:
        spent = ("no checkpoint from before it to roll back to" if found is None
                 else f"{state['rollbacks']} roll-backs spent")
        raise Diverged(f"step {step}: {reason}; {spent}; nothing exported, the checkpoints in {ckpt_dir} are kept; "
                       "lower --lr and train again")
    counters = {"lr_scale": state["lr_scale"] * 0.5, "rollbacks": state["rollbacks"] + 1,
                "reseed": state.get("reseed", 0) + 1}
    back, saved = restore(found)
    state.clear()
    state.update({"recent": {}, "troubled": 0, **saved, **counters})
    log.write({"step": step, "event": "rollback", "reason": reason, "to_step": back, "lr_scale": state["lr_scale"],
               "reseed": state["reseed"]})
    if main:
        print(f"step {step}: {reason}: rolled back to step {back} with lr x{state['lr_scale']:g} and new batches",
              file=sys.stderr)
    return back
