#!/usr/bin/env bash
# Inference-time scaling on the captions text-to-image teacher (docs/BENCHMARKS.md §16), compute-matched: prompt
# accuracy, FD and recall on seen captions against NFE per sample (every candidate counted) for (a) more DPM-Solver++
# steps, (b) best-of-N at 4 steps, (c) best-of-N on a 1-step student (when STUDENT is given), (d) DeepCache + best-of-N.
# The verifier is the separately seeded captions attribute network (seed 1); the ruler's is seed 0.
# Usage: bash benchmarks/search_captions.sh TEACHER_MODEL OUT_DIR [STUDENT_MODEL]   (N=200 samples per row by default)
set -euo pipefail
teacher=$1
out=$2
student=${3:-}
n=${N:-200}
mkdir -p "$out"
fewstep=${FEWSTEP:-fewstep}
ev() { $fewstep eval --n "$n" --no-agreement --timing-batch 8 --prompts captions:seen --results "$out/search.jsonl" "$@";
       uptime >> "$out/load.txt"; }
v=verifier=captions:seed=1
if [ "${PART:-all}" != student ]; then
for steps in 2 4 8 15 30; do ev --model "$teacher" --sampler dpmpp_2m --steps "$steps"; done          # (a)
for k in 2 4 8; do ev --model "$teacher" --sampler dpmpp_2m --steps 4 --search "best-of:n=$k,$v"; done  # (b)
for k in 1 2; do ev --model "$teacher" --sampler dpmpp_2m --steps 15 --cache deepcache:interval=2 \
  --search "best-of:n=$k,$v"; done                                                                        # (d)
fi
[ -z "$student" ] && exit 0
for k in 1 4 8 16 30; do ev --model "$student" --steps 1 --search "best-of:n=$k,$v"; done                # (c)
