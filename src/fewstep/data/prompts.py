"""Prompts: a UTF-8 file with one prompt per line, and the prompt sets text-to-image models are sampled and scored on.

A prompt set is named by `--prompts`: a file (one prompt per line; sample i gets prompt i mod k), `captions:seen` or
`captions:heldout` (the first n captions of that test split, one per sample), or `captions` (both splits, reported
apart). A model trained on the captions set defaults to `captions`; captions prompts, or a file of captions in its
grammar, are scored by the captions ruler (fewstep.metrics.captions), any other prompts by cost and agreement only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fewstep.core.errors import UserError
from fewstep.data.folder import read_text

CAPTION_SPLITS = ("seen", "heldout")


def read_prompts(path: str | Path) -> list[str]:
    """The file's non-blank lines, stripped (a UserError for a missing, empty or non-UTF-8 file)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompts file {path} does not exist")
    prompts = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompts file {path} holds no prompts; write one prompt per line")
    return prompts


@dataclass(frozen=True)
class PromptSet:
    """n prompts, one per sample; `split` ("seen" / "heldout") when the captions ruler can score them, else None."""

    name: str  # captions:seen | captions:heldout | the file's path
    prompts: list[str]
    split: str | None = None


def _caption_split(captions: list[str], path: str) -> str:
    """The captions split a file of captions belongs to: all held-out combinations, or none of them."""
    from fewstep.data.captions import caption_attributes, is_heldout

    heldout = is_heldout(caption_attributes(captions))
    if heldout.any() and not heldout.all():
        raise UserError(f"{path} mixes seen and held-out captions ({int(heldout.sum())} of {len(captions)} hold a "
                        "held-out colour+shape pair); put each split in its own file, they are reported apart")
    return "heldout" if heldout.all() else "seen"


def fit_prompts(spec: str | None, dataset: str, n: int) -> PromptSet:
    """The prompt set an offline fit or search samples: `spec` (as --prompts names it), else, for a model trained on
    the captions set (`dataset`), its first n seen captions."""
    captions_task = dataset.startswith("captions")
    return prompt_sets(spec or ("captions:seen" if captions_task else None), n, captions_task)[0]


def prompt_sets(spec: str | None, n: int, captions_task: bool = False) -> list[PromptSet]:
    """The prompt sets `spec` names, each with n prompts; `captions_task`: the model was trained on captions, so
    its default is both caption splits and a file's prompts must be captions the ruler can score."""
    from fewstep.data.captions import caption_prompts

    if spec is None:
        if not captions_task:
            raise UserError("this text-to-image model records no prompt set; pass --prompts FILE (one prompt per "
                            "line) or --prompts captions:seen")
        spec = "captions"
    if spec == "captions" or spec.startswith("captions:"):
        splits = CAPTION_SPLITS if spec == "captions" else (spec.split(":", 1)[1],)
        if not set(splits) <= set(CAPTION_SPLITS):
            raise UserError(f"--prompts {spec}: the captions prompt sets are captions:seen, captions:heldout and "
                            "captions (both)")
        return [PromptSet(f"captions:{s}", caption_prompts(s, n).captions, s) for s in splits]
    prompts = read_prompts(spec)
    cycled = [prompts[i % len(prompts)] for i in range(n)]
    return [PromptSet(str(spec), cycled, _caption_split(cycled, spec) if captions_task else None)]
