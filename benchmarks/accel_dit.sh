#!/usr/bin/env bash
# Transformer caches (docs/BENCHMARKS.md §5, DiT): first-block cache and the error-aware cache at 18 Heun steps on the
# small digits DiT teacher, next to the plain sampler at fewer steps (the same cost without a cache).
# Usage: bash benchmarks/accel_dit.sh DIT_TEACHER_RUN OUT_DIR   e.g. runs/digits-dit-small runs/accel-dit
set -euo pipefail
teacher=$1
out=$2
n=${N:-2000}
mkdir -p "$out"
R="$out/caches.jsonl"
profile="$out/profile-heun18.json"
[ -f "$profile" ] || python - "$teacher" "$profile" <<'PY'
import sys, torch
from fewstep.accel.errorcache import profile_residuals
from fewstep.core.schedules import make_schedule
from fewstep.models.io import load_model
model = load_model(sys.argv[1])
sigmas = make_schedule("karras", 18, model.denoiser.sigma_range)
labels = torch.arange(16) % model.info.num_classes if model.info.num_classes else None
profile_residuals(model.denoiser, model.info.shape, sigmas, "heun", n=16, seed=1000, labels=labels).save(sys.argv[2])
PY
for c in ${CACHES:-none fbcache:threshold=0.05 fbcache:threshold=0.1 fbcache:threshold=0.2 \
         errorcache:profile=$profile,budget=0.2 errorcache:profile=$profile,budget=0.4}; do
  fewstep eval --model "$teacher" --sampler heun --steps 18 --cache "$c" --n "$n" --results "$R"
done
for k in ${FEWER_STEPS:-9 12}; do  # the same sampler with fewer steps: what the saved compute buys without a cache
  fewstep eval --model "$teacher" --sampler heun --steps "$k" --n "$n" --results "$R"
done
