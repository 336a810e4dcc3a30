"""Other projects' caches as comparison rows: `peer:NAME:key=value,...` applies a peer's cache to fewstep's model.

The peers are diffusers' own cache hooks (diffusers.hooks) and the cache-dit package (`pip install fewstep[peers]`),
applied to the diffusers transformer inside the model exactly as their documentation applies them to a pipeline's
transformer; the settings go to the peer's own config class unchanged. The handle is fewstep's: remove() takes the
hooks off (the network is built and behaves exactly as before), and each sampling trajectory starts from a fresh
peer state. They are not dependencies of fewstep's core: a peer that does not import says so in one line.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import torch
from torch import nn

from fewstep.accel.base import AcceleratorHandle, parse_spec
from fewstep.accel.blocks import BlockStack, block_stack
from fewstep.accel.calibrate import wants_calibration
from fewstep.config import build_config
from fewstep.core.errors import UserError
from fewstep.samplers import generate


class PeerHandle(AcceleratorHandle):
    """A peer's cache on one transformer: counts its calls, resets the peer per trajectory, removes it."""

    def __init__(self, name: str, stack: BlockStack, reset: Callable[[], None], release: Callable[[], None],
                 attributes: dict[nn.Module, set[str]]):
        super().__init__()
        self.name, self.net, self._reset, self._release = name, stack.net, reset, release
        self._attributes = attributes  # each module's instance attributes before the peer was applied
        self.calls = 0
        signature = inspect.signature(type(stack.net).forward)  # the class's: a peer may wrap the instance's
        self._hook = stack.net.register_forward_pre_hook(partial(self._network_call, signature), with_kwargs=True)

    def _network_call(self, signature: inspect.Signature, net: nn.Module, args: tuple, kwargs: dict) -> None:
        bound = signature.bind(net, *args, **kwargs).arguments
        self.begin_call(bound["hidden_states"], bound["timestep"])
        self.calls += 1

    def clear(self) -> None:
        self._reset()

    def detach(self) -> None:
        self._hook.remove()
        self._release()
        for m, before in self._attributes.items():  # what the peer set on instances (patched forwards, flags) goes
            for key in set(m.__dict__) - before:
                del m.__dict__[key]

    def stats(self) -> dict[str, int]:
        """Network calls (the peer keeps its own count of what it skipped; FLOPs count what really ran)."""
        return {"network_calls": self.calls}


def _diffusers_hook(apply_name: str, config_name: str, stack: BlockStack, settings: dict[str, str],
                    handle: list) -> tuple[Callable[[], None], Callable[[], None]]:
    """Apply a diffusers.hooks cache; (reset, release) that clear its state and take every hook it added off."""
    import diffusers.hooks as hooks
    from diffusers.hooks.hooks import CacheContext, HookRegistry, _set_cache_context

    config_cls = getattr(hooks, config_name)
    extra = {}
    if "current_timestep_callback" in inspect.signature(config_cls).parameters:  # PAB, FasterCache read the timestep
        extra["current_timestep_callback"] = lambda: handle[0].level
    config = build_config(config_cls, settings, extra, where=f"peer diffusers {config_name}")
    net = stack.net
    before = {m: set(m._diffusers_hook.hooks) for m in net.modules() if hasattr(m, "_diffusers_hook")}
    getattr(hooks, apply_name)(net, config)
    hooked = {name for name, m in net.named_modules()
              if set(getattr(getattr(m, "_diffusers_hook", None), "hooks", ())) - before.get(m, set())}

    def reset() -> None:  # resetting a hook's state drops its context: set the one a pipeline's cache_context sets
        for m in net.modules():
            if hasattr(m, "_diffusers_hook"):
                m._diffusers_hook.reset_stateful_hooks(recurse=False)
        _set_cache_context(net, CacheContext("fewstep"))

    def release() -> None:
        _set_cache_context(net, None)
        for m in list(net.modules()):
            registry: HookRegistry | None = getattr(m, "_diffusers_hook", None)
            if registry is None:
                continue
            for name in [n for n in registry._hook_order if n not in before.get(m, set())]:
                registry.remove_hook(name, recurse=False)
            if m not in before:  # the registry was the peer's
                del m._diffusers_hook

    if not hooked - {""}:  # only the registry on the network itself: the hook matched none of its modules
        release()
        raise UserError(f"peer diffusers {config_name} matched no module of this {type(net).__name__} (its module "
                        "patterns do not fit this network's names); give them as settings, e.g. "
                        "cache_identifiers=[\"transformer_blocks[.].*attn1\"]")
    return reset, release


# transformers cache-dit adapts only inside their pipeline (its register name), with that adapter's block pattern
CACHE_DIT_PATTERNS = {"SD3Transformer2DModel": "Pattern_1"}  # StableDiffusion3: blocks return (context, hidden)


def _cache_dit(stack: BlockStack, settings: dict[str, str]) -> tuple[Callable[[], None], Callable[[], None]]:
    """Apply cache-dit's DBCache to the transformer, as cache-dit adapts that transformer class."""
    os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")  # its info lines on every apply and remove
    try:
        import cache_dit
    except ImportError as e:
        raise UserError(f"peer cache-dit is not installed ({e}); pip install 'fewstep[peers]'") from None
    from cache_dit import BlockAdapter, DBCacheConfig, ForwardPattern

    net = stack.net
    config = build_config(DBCacheConfig, settings, where="peer cache-dit DBCacheConfig")
    pattern = CACHE_DIT_PATTERNS.get(type(net).__name__)
    # cache-dit's own adapter for the transformer's class, or (a class it only adapts inside its pipeline) the
    # blocks with the pattern of cache-dit's pipeline adapter for it
    target = net if pattern is None else BlockAdapter(transformer=net, blocks=net.transformer_blocks,
                                                      forward_pattern=getattr(ForwardPattern, pattern),
                                                      check_forward_pattern=True)
    cache_dit.enable_cache(target, cache_config=config)

    def reset() -> None:
        cache_dit.refresh_context(net)

    def release() -> None:
        cache_dit.disable_cache(net)

    return reset, release


@dataclass(frozen=True)
class Peer:
    """How one peer's cache is applied: (stack, settings, handle slot) -> (reset, release); `refuses` names why it
    cannot run on a block stack it would otherwise take (None: it can)."""

    apply: Callable[..., tuple[Callable[[], None], Callable[[], None]]]
    summary: str
    refuses: Callable[[BlockStack], str | None] = lambda stack: None


def _text_free_tail(stack: BlockStack) -> str | None:
    """diffusers 0.42's FirstBlockCache subtracts the last block's text tokens, which SD3's last block does not return."""
    if getattr(stack.blocks[-1].module, "context_pre_only", False):
        return ("its last block returns no text tokens and diffusers' FirstBlockCache subtracts from them; use "
                "fewstep's fbcache (the same algorithm) or peer:cache-dit")
    return None


def _branch_order(stack: BlockStack) -> str | None:
    """diffusers' FasterCache reads a batch as [unconditional; conditional] halves, a diffusers pipeline's order."""
    return ("FasterCache approximates the unconditional half of a diffusers pipeline's [unconditional; conditional] "
            "batch, and fewstep's guidance batches [conditional; guided unconditional rows]: it would swap the "
            "branches; use fewstep's guidance skipping (--guidance adaptive, --cfg-interval) for that saving")


def _hook(apply_name: str, config_name: str) -> Callable:
    return lambda stack, settings, handle: _diffusers_hook(apply_name, config_name, stack, settings, handle)


PEERS: dict[str, Peer] = {
    "diffusers-fbcache": Peer(_hook("apply_first_block_cache", "FirstBlockCacheConfig"),
                              "diffusers FirstBlockCache (threshold)", refuses=_text_free_tail),
    "diffusers-taylorseer": Peer(_hook("apply_taylorseer_cache", "TaylorSeerCacheConfig"),
                                 "diffusers TaylorSeer (cache_interval, max_order, disable_cache_before_step)"),
    "diffusers-magcache": Peer(_hook("apply_mag_cache", "MagCacheConfig"),
                               "diffusers MagCache (threshold, num_inference_steps, mag_ratios; calibrate=true: "
                               "fewstep accelerate fits mag_ratios)"),
    "diffusers-pab": Peer(_hook("apply_pyramid_attention_broadcast", "PyramidAttentionBroadcastConfig"),
                          "diffusers PyramidAttentionBroadcast (spatial_attention_block_skip_range, ...)"),
    "diffusers-fastercache": Peer(_hook("apply_faster_cache", "FasterCacheConfig"),
                                  "diffusers FasterCache (spatial_attention_block_skip_range, ...)",
                                  refuses=_branch_order),
    "cache-dit": Peer(lambda stack, settings, handle: _cache_dit(stack, settings),
                      "cache-dit DBCache (Fn_compute_blocks, Bn_compute_blocks, residual_diff_threshold, ...)"),
}


def apply_peer(model: Any, spec: str, calibrating: bool = False) -> PeerHandle:
    """Apply 'peer:NAME:key=value,...' (a peer's own setting names) to the transformer inside `model`; a peer's
    calibration mode (calibrate=true) only when `calibrating` (fewstep.accel.calibrate runs it once, offline)."""
    name, settings = parse_spec(spec.strip()[len("peer:"):])
    if name not in PEERS:
        raise UserError(f"unknown peer {name!r}; choose one of {', '.join(PEERS)}")
    if wants_calibration(settings) and not calibrating:
        raise UserError(f"peer {name}: calibrate=true fits once, offline: run fewstep accelerate --cache "
                        f"'peer:{name}:...,calibrate=true' and sample the folder it writes (its spec holds the fit)")
    stack = block_stack(model, f"peer {name}")
    problem = PEERS[name].refuses(stack)
    if problem:
        raise UserError(f"peer {name} fails on this {type(stack.net).__name__}: {problem}")
    if any("forward" in m.__dict__ for m in stack.net.modules()):
        raise UserError(f"cannot apply peer {name}: this network is already accelerated; remove() the other first")
    slot: list = []
    attributes = {m: set(m.__dict__) for m in stack.net.modules()}
    try:
        reset, release = PEERS[name].apply(stack, settings, slot)
    except (ValueError, TypeError, RuntimeError, IndexError, AttributeError, NotImplementedError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"peer {name} cannot be applied to this {type(stack.net).__name__}: {message}") from None
    handle = PeerHandle(f"peer:{name}", stack, reset, release, attributes)
    slot.append(handle)
    return handle


def magcache_ratios(denoiser: Any, shape: Sequence[int], sigmas: torch.Tensor, sampler: str = "euler", n: int = 8,
                    seed: int = 1000, labels: Any = None, device: str = "cpu") -> list[float]:
    """diffusers MagCache's magnitude ratio per network call (its own calibrate=True mode, which skips nothing), on
    one run of samples 0..n-1 of the held-out `seed`."""
    from diffusers.hooks.mag_cache import MagCacheHeadHook

    # a step count no run reaches: MagCache prints and drops its ratios when a run reaches num_inference_steps
    handle = apply_peer(denoiser, "peer:diffusers-magcache:calibrate=true,num_inference_steps=1000000000",
                        calibrating=True)
    try:
        generate(denoiser, shape, n, sigmas, sampler, seed, labels, batch_size=n, device=device)
        head = next(h for m in handle.net.modules() if hasattr(m, "_diffusers_hook")
                    for h in m._diffusers_hook.hooks.values() if isinstance(h, MagCacheHeadHook))
        ratios = list(head.state_manager.get_state().calibration_ratios)
    finally:
        handle.remove()
    return ratios
