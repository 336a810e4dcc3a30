"""Tiny random Stable-Diffusion-layout pipelines built offline from configs (as diffusers' own tests build them), and
a CLIP tokenizer written from a small vocabulary."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

import torch

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORDS = ("a", "an", "the", "of", "photo", "painting", "drawing", "red", "green", "blue", "small", "large", "cat",
         "dog", "bird", "house", "tree", "car", "on", "in", "with", "and")
SD_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
                "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True}


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word as CLIP's tokenizer does it: join every occurrence of the adjacent pair of
    lowest rank, left to right, until no adjacent pair is a merge."""
    while len(symbols) > 1:
        pair = min(zip(symbols, symbols[1:]), key=lambda p: ranks.get(p, len(ranks)))
        if pair not in ranks:
            break
        joined, i = [], 0
        while i < len(symbols):
            if tuple(symbols[i:i + 2]) == pair:
                joined.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                joined.append(symbols[i])
                i += 1
        symbols = joined
    return symbols


def build_clip_tokenizer(words: Iterable[str], folder: str | Path, model_max_length: int = 77):
    """Write vocab.json + merges.txt for a byte-level BPE CLIPTokenizer that knows `words`, and load it from `folder`.

    The vocabulary is CLIP's layout: the 256 byte symbols, the same with the end-of-word mark `</w>`, then the merged
    tokens, then BOS and EOS. Every listed word is one token: its merges join what the earlier merges leave of it and
    rank after them, so they never change an earlier word's encoding; any other text still tokenizes, byte by byte.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        for piece in re.findall(r"[^\W\d_]+", word.lower()):  # CLIP pre-tokenizes into runs of letters
            chars = list(byte_level.pre_tokenize_str(piece)[0][0])
            pieces = _bpe(chars[:-1] + [chars[-1] + "</w>"], ranks)
            while len(pieces) > 1:  # no merge applies to these pieces: join the first two, then encode again
                ranks[(pieces[0], pieces[1])] = len(ranks)
                vocab.setdefault(pieces[0] + pieces[1], len(vocab))
                pieces = _bpe(pieces, ranks)
    for special in (BOS, EOS):
        vocab[special] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in ranks), encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=model_max_length)
    tokenizer.save_pretrained(folder)  # adds tokenizer.json and tokenizer_config.json (model_max_length)
    return tokenizer


def tiny_clip_config(tokenizer, hidden_size: int = 32, projection_dim: int = 32):
    """diffusers' test CLIPTextConfig sized to the tokenizer."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, hidden_size=hidden_size, intermediate_size=64,
                          layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=3, vocab_size=len(tokenizer),
                          max_position_embeddings=tokenizer.model_max_length, projection_dim=projection_dim,
                          hidden_act="gelu")


def tiny_unet(cross_attention_dim: int, sdxl: bool = False, sample_size: int = 8, layers_per_block: int = 1):
    """diffusers' test UNet2DConditionModel; the SDXL layout adds the text_time embedding of pooled text + sizes."""
    from diffusers import UNet2DConditionModel

    extra = dict(addition_embed_type="text_time", addition_time_embed_dim=8, use_linear_projection=True,
                 projection_class_embeddings_input_dim=6 * 8 + 32) if sdxl else {}
    return UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=layers_per_block,
                                sample_size=sample_size, in_channels=4, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=4,
                                **extra)


def tiny_vae(**config):
    """diffusers' test AutoencoderKL: 4 latent channels, downsampling by 2; `config` adds settings (shift_factor)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         norm_num_groups=4, sample_size=16, **config)


def tiny_scheduler(name: str = "DDIMScheduler", prediction_type: str = "epsilon", **config):
    """A scheduler of class `name` on Stable Diffusion's noise schedule (scaled_linear, offset 1), with overrides."""
    import diffusers

    cls = getattr(diffusers, name)
    known = {k: v for k, v in SD_SCHEDULER.items() if k in cls().config}  # only the settings this class has
    return cls.from_config({**known, "prediction_type": prediction_type, **config})


def save_tiny_pipeline(folder: str | Path, scheduler: str = "DDIMScheduler", prediction_type: str = "epsilon",
                       sdxl: bool = False, words: Iterable[str] = WORDS, seed: int = 0, layers_per_block: int = 1,
                       **scheduler_config) -> Path:
    """Save a random tiny StableDiffusionPipeline (or SDXL-layout) folder with safetensors weights; nothing downloaded.

    Latents are 4 x 8 x 8, images 3 x 16 x 16; `scheduler_config` overrides the scheduler's settings.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    tokenizer = build_clip_tokenizer(words, folder / "tokenizer")
    torch.manual_seed(seed)
    parts = dict(vae=tiny_vae(), tokenizer=tokenizer, scheduler=tiny_scheduler(scheduler, prediction_type,
                                                                               **scheduler_config))
    if sdxl:
        tokenizer_2 = build_clip_tokenizer(words, folder / "tokenizer_2")
        parts.update(unet=tiny_unet(64, sdxl=True, layers_per_block=layers_per_block),
                     text_encoder=CLIPTextModel(tiny_clip_config(tokenizer)), tokenizer_2=tokenizer_2,
                     text_encoder_2=CLIPTextModelWithProjection(tiny_clip_config(tokenizer_2)))
        pipe = StableDiffusionXLPipeline(**parts, force_zeros_for_empty_prompt=True, add_watermarker=False)
    else:
        parts.update(unet=tiny_unet(32, layers_per_block=layers_per_block),
                     text_encoder=CLIPTextModel(tiny_clip_config(tokenizer)))
        pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_sd3_transformer(clip_hidden: int = 32, projection_dim: int = 32, sample_size: int = 8, channels: int = 4,
                         num_layers: int = 1, num_attention_heads: int = 2, attention_head_dim: int = 8, **config):
    """An SD3Transformer2DModel on patches of 2 latent pixels for two CLIP encoders side by side (joint width 2 x
    hidden, pooled width 2 x projection); `config` adds settings (qk_norm)."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(sample_size=sample_size, patch_size=2, in_channels=channels, out_channels=channels,
                                 num_layers=num_layers, attention_head_dim=attention_head_dim,
                                 num_attention_heads=num_attention_heads, joint_attention_dim=2 * clip_hidden,
                                 caption_projection_dim=num_attention_heads * attention_head_dim,
                                 pooled_projection_dim=2 * projection_dim, pos_embed_max_size=sample_size, **config)


def build_t5_tokenizer(words: Iterable[str]):
    """A T5 (unigram) tokenizer that knows `words` (each one token, SentencePiece's "▁" word-start mark), else <unk>."""
    from transformers import T5TokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", *dict.fromkeys("▁" + w.lower() for w in words)]
    return T5TokenizerFast(vocab=[(piece, -1.0) for piece in pieces], extra_ids=0)


def save_tiny_sd3_pipeline(folder: str | Path, words: Iterable[str] = WORDS, seed: int = 0, t5: bool = False,
                           **scheduler_config) -> Path:
    """Save a random tiny StableDiffusion3Pipeline folder (two CLIP encoders, and a T5 encoder if `t5`) with
    safetensors weights.

    Latents are 4 x 8 x 8, images 3 x 16 x 16, the VAE shifted and scaled as SD3's is; `scheduler_config` sets the
    FlowMatchEulerDiscreteScheduler's options.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    folder = Path(folder)
    words = list(words)
    tokenizers = [build_clip_tokenizer(words, folder / name) for name in ("tokenizer", "tokenizer_2")]
    torch.manual_seed(seed)
    encoders = [CLIPTextModelWithProjection(tiny_clip_config(t)) for t in tokenizers]
    transformer = tiny_sd3_transformer()
    third = {"text_encoder_3": None, "tokenizer_3": None}
    if t5:
        tokenizer = build_t5_tokenizer(words)
        config = T5Config(vocab_size=len(tokenizer), d_model=transformer.config.joint_attention_dim, d_ff=32, d_kv=8,
                          num_layers=1, num_heads=2)
        third = {"text_encoder_3": T5EncoderModel(config), "tokenizer_3": tokenizer}
    pipe = StableDiffusion3Pipeline(transformer=transformer, vae=tiny_vae(shift_factor=0.1, scaling_factor=1.5),
                                    scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_config),
                                    text_encoder=encoders[0], tokenizer=tokenizers[0], text_encoder_2=encoders[1],
                                    tokenizer_2=tokenizers[1], **third)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
