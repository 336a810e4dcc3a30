#!/usr/bin/env bash
# The captions text-to-image teacher (docs/BENCHMARKS.md, "captions teacher"): train the small preset with a trained
# and with a frozen text encoder (the second reuses the first's autoencoder stage: same seed, same weights), then
# score both at a converged sampler with CFG and the trained one over samplers x NFE.
# Usage: bash benchmarks/captions_teacher.sh [RUNS_DIR] [N]   (about 40 + 30 min on 2 idle CPU cores per run)
set -euo pipefail
runs=${1:-runs}
n=${2:-500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per process: a shared machine's cores spin otherwise
[ -f "$runs/captions-trained/model/fewstep.json" ] || fewstep train --dataset captions --preset small \
  --text-encoder trained --out "$runs/captions-trained" $([ -f "$runs/captions-trained/config.toml" ] && echo --resume)
if [ ! -f "$runs/captions-frozen/model/fewstep.json" ]; then
  if [ ! -f "$runs/captions-frozen/config.toml" ]; then
    mkdir -p "$runs/captions-frozen/unet"
    cp -r "$runs/captions-trained/autoencoder" "$runs/captions-frozen/"
    cp "$runs/captions-trained/unet/latents.safetensors" "$runs/captions-frozen/unet/"
    fewstep train --dataset captions --preset small --text-encoder frozen --out "$runs/captions-frozen"
  else
    fewstep train --out "$runs/captions-frozen" --resume
  fi
fi
for te in trained frozen; do
  python benchmarks/captions_eval.py "$runs/captions-$te/model" --n "$n" --cfg-scale 3 \
    --settings dpmpp_2m:karras:15 --out "$runs/captions-eval.jsonl"
done
python benchmarks/captions_eval.py "$runs/captions-trained/model" --n "$n" --cfg-scale 3 --splits seen \
  --settings euler:karras:5 euler:karras:10 heun:karras:3 heun:karras:5 dpmpp_2m:karras:5 dpmpp_2m:karras:10 \
  ddim:scheduler:10 --out "$runs/captions-sweep.jsonl"
