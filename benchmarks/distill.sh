#!/usr/bin/env bash
# Distillation tables (docs/BENCHMARKS.md §4): progressive, consistency, reflow, DMD2, ADD and Lightning students of one
# teacher, each
# measured at 1, 2 and 4 steps on the ruler, next to the teacher's training-free samplers at the same NFE.
# Usage: bash benchmarks/distill.sh TEACHER_RUN OUT_DIR [METHODS]   e.g. runs/digits-small runs/distill-digits
# Cost on 2 CPU cores with the small digits teacher: about 80 minutes, one thread each (see docs/BENCHMARKS.md §4).
set -euo pipefail
teacher=$1
out=$2
methods=${3:-consistency reflow progressive dmd2 add lightning}
n=${N:-2000}
for method in $methods; do
  flags=(--steps 1,2,4)
  dir=$method
  case $method in
    progressive) flags+=(--pd-start-steps 8 --train-steps ${PD_ROUND_STEPS:-800}) ;;
    lightning) flags+=(--pd-start-steps 4 --train-steps ${LIGHTNING_ROUND_STEPS:-300} --adv-distill-weight 25) ;;
    add) flags+=(--train-steps ${ADD_STEPS:-800} --adv-distill-weight 0.5) ;;
    dmd2) flags=(--steps 1 --lr 1e-4 --train-steps ${DMD_STEPS:-3000}); dir=dmd2-gan ;;  # the GAN term is on
  esac
  [ -f "$out/$dir/model/fewstep.json" ] || \
    fewstep distill --teacher "$teacher" --method "$method" --out "$out/$dir" --device cpu --resume "${flags[@]}"
  for k in 1 2 4; do
    model="$out/$dir"
    case $method in progressive|lightning) model="$out/$dir/model-${k}step" ;; esac
    fewstep eval --model "$model" --steps "$k" --n "$n" --results "$out/students.jsonl"
  done
done
# the teacher's samplers at the students' NFE (both schedules), and converged (18 Heun steps)
[ -f "$out/teacher.jsonl" ] || {
  fewstep eval --model "$teacher" --sweep --samplers euler,heun,dpmpp_2m --schedules karras,karras_trailing \
    --nfe 1,2,4 --n "$n" --results "$out/teacher.jsonl"
  fewstep eval --model "$teacher" --sampler heun --steps 18 --n "$n" --results "$out/teacher.jsonl"
}
python benchmarks/render_distill.py "$out"
