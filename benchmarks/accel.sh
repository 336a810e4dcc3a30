#!/usr/bin/env bash
# Training-free acceleration tables (docs/BENCHMARKS.md §5) on the small digits U-Net teacher:
# feature caches at 18 Heun steps, searched 4/8-NFE schedules against hand-made ones, guidance skipping.
# Usage: bash benchmarks/accel.sh TEACHER_RUN OUT_DIR   e.g. runs/digits-small runs/accel-digits  (about 50 minutes)
set -euo pipefail
teacher=$1
out=$2
n=${N:-2000}
mkdir -p "$out"
R="$out/caches.jsonl"
for c in none deepcache:interval=2,branch=0 deepcache:interval=3,branch=0 deepcache:interval=5,branch=0 \
         deepcache:interval=2,branch=1 deepcache:interval=3,branch=1 encprop:interval=2 encprop:interval=3 \
         "deepcache:interval=3,branch=0,power=1.4,nfe=35"; do
  fewstep eval --model "$teacher" --sampler heun --steps 18 --cache "$c" --n "$n" --results "$R"
done
S="$out/schedules.jsonl"
for k in 4 8; do
  [ -f "$out/sched-dpmpp_2m-$k.json" ] || \
    fewstep search-schedule --model "$teacher" --sampler dpmpp_2m --nfe "$k" --out "$out/sched-dpmpp_2m-$k.json"
  fewstep eval --model "$teacher" --schedule "$out/sched-dpmpp_2m-$k.json" --n "$n" --results "$S"
done
fewstep eval --model "$teacher" --sweep --samplers dpmpp_2m --schedules karras,karras_trailing,loglinear \
  --nfe 4,8 --n "$n" --results "$S"
G="$out/guidance.jsonl"
fewstep eval --model "$teacher" --steps 18 --cfg-scale 2 --n "$n" --results "$G"
for t in 0.999 0.995; do  # the paper's criterion, cos(eps_cond, eps_cfg): degenerate at sigma_max = 80
  fewstep eval --model "$teacher" --steps 18 --cfg-scale 2 --guidance "adaptive:threshold=$t,space=eps" --n "$n" --results "$G"
done
for t in 0.99 0.993 0.995 0.997; do  # the noise-invariant criterion, cos(D_cond, D_cfg) (the default)
  fewstep eval --model "$teacher" --steps 18 --cfg-scale 2 --guidance "adaptive:threshold=$t,space=denoised" --n "$n" \
    --results "$G"
done
for iv in 1,80 0.3,80 3,80; do  # guidance only at high noise (the CFG interval; "Step AG")
  fewstep eval --model "$teacher" --steps 18 --cfg-scale 2 --cfg-interval "$iv" --n "$n" --results "$G"
done
