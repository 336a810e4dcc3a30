"""The captions U-Net teacher's learning curve from a run that is still training: each checkpoint's EMA model draws
the first N seen captions (the recorded sampler and CFG scale) and the captions ruler scores them.

    python benchmarks/captions_curve.py RUN --n 100 --out curve.jsonl   # every checkpoint present, one JSON line each

Checkpoints already in --out are skipped, so it can be re-run while the training run goes on (it keeps the last two).
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

from safetensors.torch import load_file


def ema_network(run: Path, cfg: dict):
    """The U-Net stage's TextToImageNetwork, built once; each checkpoint's EMA weights are loaded into it."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from fewstep.train.text2image import build_unet
    from fewstep.train.vp import TextToImageNetwork

    tokenizer = CLIPTokenizer.from_pretrained(run / "text_encoder" / "tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(run / "text_encoder", local_files_only=True, use_safetensors=True)
    latents = load_file(run / "unet" / "latents.safetensors")["latents"]
    unet = build_unet(cfg["preset"], tuple(latents.shape[1:]), encoder.config.hidden_size)
    return TextToImageNetwork(unet, encoder, tokenizer, cfg["text_encoder"] == "trained").eval()


def main() -> None:
    from diffusers import AutoencoderKL

    from fewstep.config import TrainConfig, build_config
    from fewstep.data.captions import caption_prompts
    from fewstep.metrics.captions import caption_quality
    from fewstep.train.text2image import noise_scheduler, preview_row, text_preview

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    cfg = tomllib.loads((args.run / "config.toml").read_text())
    done = {json.loads(line)["step"] for line in args.out.read_text().splitlines()} if args.out.exists() else set()
    vae = AutoencoderKL.from_pretrained(args.run / "autoencoder" / "model", local_files_only=True,
                                        use_safetensors=True).eval()
    captions = caption_prompts("seen", args.n).captions
    network = ema_network(args.run, cfg)
    for checkpoint in sorted((args.run / "unet" / "checkpoints").glob("step-*")):
        step = int(checkpoint.name[5:])
        if step in done or not (checkpoint / "state.json").exists():
            continue
        network.load_state_dict(load_file(checkpoint / "model-ema.safetensors"))
        images = text_preview(network, vae, noise_scheduler(build_config(TrainConfig, cfg)), cfg["prediction_type"],
                              captions, args.out.with_name(f"{args.out.stem}-step{step:05d}.png"))
        row = {"n": args.n, **preview_row(step, caption_quality(images, captions, "seen"))}
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
