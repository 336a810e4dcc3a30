#!/usr/bin/env bash
# The ruler's sampler tables (docs/BENCHMARKS.md): teachers, then samplers x NFE on digits and 8gaussians.
# Usage: bash benchmarks/sampler_sweep.sh [RUNS_DIR]   (about 40 minutes on 2 CPU cores)
set -euo pipefail
runs=${1:-runs}
[ -f "$runs/digits-small/model/fewstep.json" ] || fewstep train --dataset digits --preset small --out "$runs/digits-small" --device cpu
[ -f "$runs/8gaussians-small/model/fewstep.json" ] || fewstep train --dataset 8gaussians --preset small --out "$runs/8gaussians-small" --device cpu
fewstep eval --model "$runs/digits-small" --sweep --samplers euler,heun,dpmpp_2m,dpmpp_3m,euler_ancestral \
  --nfe 4,8,16,32,64,128 --n 2000 --results "$runs/digits-sweep.jsonl"
fewstep eval --model "$runs/8gaussians-small" --sweep --samplers euler,heun,dpmpp_2m,dpmpp_3m,euler_ancestral \
  --nfe 4,8,16,32,64,128 --n 2000 --results "$runs/8gaussians-sweep.jsonl"
fewstep eval --model "$runs/digits-small" --sampler heun --steps 18 --n 2000 --results "$runs/digits-heun18.jsonl" --json
python benchmarks/render_table.py "$runs/digits-sweep.jsonl" "$runs/8gaussians-sweep.jsonl"
