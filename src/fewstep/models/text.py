"""A pipeline's frozen tokenizer(s) and CLIP text encoder(s): prompts -> a `Cond`, built as diffusers' pipelines do."""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from fewstep.core.cond import Cond
from fewstep.core.errors import UserError

log = logging.getLogger(__name__)
_CUT_NOTED: set[tuple[str, int]] = set()  # (tokenizer, length) pairs whose cut prompts were already reported


class PromptEncoder(nn.Module):
    """Encodes a batch of prompts once, without gradients, and their null condition for classifier-free guidance.

    Stable Diffusion: the text encoder's last hidden states, the null condition the empty prompt (or the user's
    negative prompt). SDXL: both encoders' penultimate hidden states side by side, the second one's pooled
    projection and the size/crop `time_ids` as added conditions; the null condition is all zeros when the folder
    says force_zeros_for_empty_prompt and no negative prompt is given (StableDiffusionXLPipeline.encode_prompt).
    SD3 (`joint` = the transformer's joint_attention_dim and the T5 sequence length): sd3_embeddings.
    """

    def __init__(self, tokenizers: Sequence, encoders: Sequence[nn.Module], time_ids: Sequence[int] | None = None,
                 force_zeros_for_empty_prompt: bool = False, joint: tuple[int, int] | None = None):
        super().__init__()
        self.tokenizers = list(tokenizers)
        self.encoders = nn.ModuleList(encoders).eval().requires_grad_(False)
        self.time_ids = None if time_ids is None else torch.tensor([list(time_ids)], dtype=torch.float32)
        self.force_zeros = force_zeros_for_empty_prompt
        self.joint = joint

    @property
    def xl(self) -> bool:
        """Whether this is SDXL's two-encoder layout."""
        return self.time_ids is not None

    def forward(self, prompts: Sequence[str], negative: str | Sequence[str] | None = None) -> Cond:
        return self.encode(prompts, negative)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], negative: str | Sequence[str] | None = None) -> Cond:
        """The Cond of `prompts` (one row each) with `negative` = the null condition of the same rows."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise UserError("no prompts given")
        negatives = [negative] * len(prompts) if negative is None or isinstance(negative, str) else list(negative)
        if len(negatives) != len(prompts):
            raise UserError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; give one, or one per prompt")
        cond = self.embed(prompts)
        if negative is None and self.force_zeros:
            null = cond.map(torch.zeros_like)
            null = Cond(text=null.text, pooled=null.pooled, added=cond.added)  # the sizes stay: only text is zeroed
        else:
            null = self.embed([n or "" for n in negatives])
        return Cond(text=cond.text, pooled=cond.pooled, added=cond.added, negative=null)

    def embed(self, prompts: list[str]) -> Cond:
        """Prompt embeddings of a list of prompts (padded to the tokenizer's max length, as the pipelines do)."""
        if self.joint is not None:
            return sd3_embeddings(self.tokenizers, self.encoders, prompts, *self.joint)
        device = next(self.encoders.parameters()).device
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders):
            tokens = tokenize(tokenizer, prompts, tokenizer.model_max_length)
            mask = tokens.attention_mask.to(device) if getattr(encoder.config, "use_attention_mask", False) else None
            out = encoder(tokens.input_ids.to(device), attention_mask=mask, output_hidden_states=self.xl)
            if not self.xl:
                return Cond(text=out[0])
            if pooled is None and out[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        added = {"time_ids": self.time_ids.to(device).expand(len(prompts), -1)}
        return Cond(text=torch.cat(hidden, dim=-1), pooled=pooled, added=added)


def tokenize(tokenizer, prompts: list[str], length: int):
    """Tokens padded and cut to length as the pipelines do, saying once per tokenizer when a prompt is cut."""
    key = (str(tokenizer.name_or_path), length)
    if key not in _CUT_NOTED:
        cut = sum(len(ids) > length for ids in tokenizer(prompts).input_ids)
        if cut:
            _CUT_NOTED.add(key)
            log.warning(f"note: {cut} of {len(prompts)} prompts are longer than the text encoder's {length} tokens "
                        "and are cut there, as diffusers' pipelines cut them")
    return tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")


def sd3_embeddings(tokenizers: Sequence, encoders: Sequence[nn.Module], prompts: list[str], joint_dim: int,
                   t5_length: int) -> Cond:
    """StableDiffusion3Pipeline.encode_prompt: both CLIPs' penultimate hidden states side by side, zero-padded to
    joint_dim, then T5's last hidden states (zeros without a third encoder) along the sequence; the CLIPs' pooled
    projections side by side. Gradients flow where the encoders have them (a teacher training its encoders)."""
    device = next(encoders[0].parameters()).device
    hidden, pooled = [], []
    for tokenizer, encoder in zip(tokenizers[:2], encoders[:2]):
        ids = tokenize(tokenizer, prompts, tokenizer.model_max_length).input_ids
        out = encoder(ids.to(device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled.append(out[0])
    clip = torch.cat(hidden, dim=-1)
    clip = torch.nn.functional.pad(clip, (0, joint_dim - clip.shape[-1]))
    if len(encoders) > 2:
        t5 = encoders[2](tokenize(tokenizers[2], prompts, t5_length).input_ids.to(device))[0]
    else:
        t5 = clip.new_zeros(len(prompts), t5_length, joint_dim)
    return Cond(text=torch.cat([clip, t5.to(clip.dtype)], dim=-2), pooled=torch.cat(pooled, dim=-1))
