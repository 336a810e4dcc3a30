#!/usr/bin/env bash
# Inference-time scaling, compute-matched (docs/BENCHMARKS.md §8): label accuracy, FD and recall against total NFE
# (every candidate counted) for (a) more Heun steps on the teacher, (b) best-of-N on the teacher at 3 Heun steps,
# (c) best-of-N and noise search on a 1-step student, (d) DeepCache + best-of-N on the teacher; then the golden-seed
# ranking's transfer to held-out labels and to the student. The verifier is the separately seeded classifier
# (seed 1); the ruler is the seed-0 feature network, so search never grades its own homework.
# Usage: bash benchmarks/search.sh TEACHER_RUN STUDENT_DIR OUT_DIR   e.g. runs/digits runs/reflow1 runs/search
# PART=teacher runs only the teacher's rows (a, b, d) — they need no student; PART=student the rest.
set -euo pipefail
teacher=$1
student=$2
out=$3
n=${N:-500}
mkdir -p "$out"
uptime >> "$out/load.txt"
fewstep=${FEWSTEP:-fewstep}  # FEWSTEP="python -m fewstep.cli" runs a checkout
ev() { $fewstep eval --n "$n" --no-agreement --timing-batch 8 --results "$out/search.jsonl" "$@"; uptime >> "$out/load.txt"; }
v=verifier=classifier:seed=1
part=${PART:-all}
if [ "$part" != student ]; then
# (a) the teacher, more steps (Heun: NFE = 2 steps - 1)
for steps in 2 3 5 9 18; do ev --model "$teacher" --sampler heun --steps "$steps"; done
# (b) the teacher at 3 Heun steps (5 NFE), best of N
for k in 3 7; do ev --model "$teacher" --sampler heun --steps 3 --search "best-of:n=$k,$v"; done
# (d) DeepCache (interval 2) on the teacher at 9 Heun steps, alone and best of 2 (34 NFE)
for k in 1 2; do ev --model "$teacher" --sampler heun --steps 9 --cache deepcache:interval=2 --search "best-of:n=$k,$v"; done
fi
[ "$part" = teacher ] && exit 0
# (c) the 1-step student, best of N, and noise search at 35 NFE
for k in 1 4 8 17 35; do ev --model "$student" --steps 1 --search "best-of:n=$k,$v"; done
ev --model "$student" --steps 1 --search "noise-search:rounds=4,n=7,lambda=0.3,$v"
# ... and keeping each item's first candidate with p(label) >= 0.95 (accept), so search only replaces failures
for k in 8 35; do ev --model "$student" --steps 1 --search "best-of:n=$k,$v,accept=-0.05"; done
# golden seeds: the teacher at 9 Heun steps ranks 256 seeds (§8 ran BANK=128 at 5 steps for time) on labels 0-4; transfer to 5-9 and to the student
$fewstep seeds --model "$teacher" --sampler heun --steps 9 --bank "${BANK:-256}" --verifier classifier:seed=1 \
  --other "$student" --out "$out/seeds"
uptime >> "$out/load.txt"
python benchmarks/render_search.py "$out"
