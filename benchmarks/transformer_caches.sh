#!/usr/bin/env bash
# Transformer caches against the peers (docs/BENCHMARKS.md, "Transformer caches side by side with the peers"): on a
# flow DiT teacher, fewstep's fbcache / errorcache / teacache and the peers' caches (diffusers hooks, cache-dit) at the
# teacher's recorded sampler, next to the plain sampler at fewer steps; one `fewstep bench`, then interleaved timings.
# Usage: bash benchmarks/transformer_caches.sh FLOW_DIT_TEACHER OUT_DIR
#   env: N (samples per row, 500), FEWER_NFE ("6, 9, 12": the plain sampler's rows), TIMING_BATCH (32), ROUNDS (2)
set -euo pipefail
teacher=$1
out=$2
n=${N:-500}
mkdir -p "$out"
# Offline fits on held-out seed 1000 at the teacher's own sampler and sigmas: errorcache's residual profile and
# teacache's polynomial (what `fewstep accelerate --cache teacache:threshold=T,calibrate=true` records).
python - "$teacher" "$out" <<'PY'
import json, sys, torch
from fewstep.accel.errorcache import profile_residuals
from fewstep.accel.teacache import calibrate
from fewstep.models.io import load_model
from fewstep.plan import build_plan
model, out = load_model(sys.argv[1]), sys.argv[2]
plan = build_plan(model)
labels = torch.arange(16) % model.info.num_classes if model.info.num_classes else None
profile_residuals(model.denoiser, model.info.shape, plan.sigmas, plan.sampler, n=16, seed=1000,
                  labels=labels).save(f"{out}/profile.json")
coefficients = calibrate(model.denoiser, model.info.shape, plan.sigmas, plan.sampler, n=16, labels=labels)
json.dump({"coefficients": coefficients, "sampler": plan.sampler, "schedule": plan.schedule, "steps": plan.steps},
          open(f"{out}/teacache.json", "w"))
PY
read -r sampler schedule steps coeffs < <(python -c "import json; d=json.load(open('$out/teacache.json')); \
print(d['sampler'], d['schedule'], d['steps'], '[' + ','.join(f'{c:.6g}' for c in d['coefficients']) + ']')")
P="$out/profile.json"
CACHES=${CACHES:-"fbcache:threshold=0.1 fbcache:threshold=0.2 errorcache:profile=$P,budget=0.5
teacache:threshold=0.1,coefficients=$coeffs teacache:threshold=0.2,coefficients=$coeffs
teacache:threshold=0.4,coefficients=$coeffs
peer:diffusers-fbcache:threshold=0.1
peer:diffusers-pab:spatial_attention_block_skip_range=2
peer:diffusers-taylorseer:cache_interval=2,disable_cache_before_step=2,cache_identifiers=[\"transformer_blocks[.].*attn1\"]
peer:cache-dit:Fn_compute_blocks=1,Bn_compute_blocks=0,residual_diff_threshold=0.1,max_warmup_steps=2
peer:cache-dit:Fn_compute_blocks=1,Bn_compute_blocks=1,residual_diff_threshold=0.2,max_warmup_steps=2"}
{
  echo "teacher = \"$teacher\""
  echo "n = $n"
  echo "timing_batch = ${TIMING_BATCH:-32}"
  echo "[samplers]"
  echo "names = [\"$sampler\"]"
  echo "schedules = [\"$schedule\"]"
  echo "nfe = [${FEWER_NFE:-6, 9, 12}]"
  for c in $CACHES; do printf "[[accelerators]]\ncache = '%s'\n" "$c"; done  # literal strings: a spec may hold quotes
} > "$out/suite.toml"
python -m fewstep.cli bench --suite "$out/suite.toml" --out "$out/bench"
python benchmarks/cache_agreement.py "$out/suite.toml" "$out/agreement.json" --n 64
python benchmarks/cache_verdict.py "$out/bench" --agreement "$out/agreement.json" | tee "$out/verdict.md"
python benchmarks/accel_timing.py "$teacher" none fbcache:threshold=0.1 "teacache:threshold=0.2,coefficients=$coeffs" \
  "teacache:threshold=0.1,coefficients=$coeffs" peer:diffusers-fbcache:threshold=0.1 \
  peer:cache-dit:Fn_compute_blocks=1,Bn_compute_blocks=0,residual_diff_threshold=0.1,max_warmup_steps=2 \
  peer:diffusers-pab:spatial_attention_block_skip_range=2 \
  --sampler "$sampler" --schedule "$schedule" --steps "$steps" --batch ${TIMING_BATCH:-32} --rounds ${ROUNDS:-2} \
  | tee "$out/timing.md"
