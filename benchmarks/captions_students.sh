#!/usr/bin/env bash
# Students of the captions teacher by method (docs/BENCHMARKS.md §16): each distilled at the CPU length below with the
# teacher's recorded CFG folded in, then scored at 1, 2 and 4 steps on seen and held-out captions (n = N, unguided).
# Usage: bash benchmarks/captions_students.sh TEACHER OUT [METHODS] [extra distill flags, e.g. --lora-rank 16]
#   METHODS (quoted, space-separated): progressive dmd2 lightning add reflow sid (default: all of them)
# Cost on one CPU thread with the small captions teacher: about 20 minutes per method at these lengths, plus 2-3 per
# eval of 3 step counts x 2 splits x N = 500.
set -euo pipefail
teacher=$1
out=$2
methods=${3:-progressive dmd2 lightning add reflow sid}
shift $(($# < 3 ? $# : 3))
n=${N:-500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
for method in $methods; do
  flags=(--steps 1,2,4 --train-steps "${STEPS:-500}" --lr 5e-4)
  sampler=consistency
  case $method in
    progressive) flags=(--steps 1,2,4 --pd-start-steps 8 --train-steps "${ROUND_STEPS:-200}" --lr 5e-4); sampler=euler ;;
    lightning) flags=(--steps 1,2,4 --pd-start-steps 4 --train-steps "${ROUND_STEPS:-200}" --lr 5e-4
                      --adv-distill-weight 25); sampler=euler ;;
    reflow) sampler=euler ;;
    dmd2) flags=(--steps 1 --train-steps "${STEPS:-500}" --lr 1e-4) ;;
    sid) flags=(--steps 1 --train-steps "${STEPS:-500}" --lr 5e-5) ;;
  esac
  dir="$out/$method"
  [ -f "$dir/model/fewstep.json" ] || [ -f "$dir/model-1step/fewstep.json" ] || \
    fewstep distill --teacher "$teacher" --method "$method" --out "$dir" --batch-size 32 --lr-warmup-steps 50 \
      --solver euler --monitor-n 0 "${flags[@]}" "$@" $([ -f "$dir/config.toml" ] && echo --resume)
  for k in 1 2 4; do
    model="$dir/model"
    case $method in progressive|lightning) model="$dir/model-${k}step" ;; esac
    [ -d "$model" ] || continue
    python benchmarks/captions_eval.py "$model" --n "$n" --cfg-scale 1 --settings "$sampler::$k" \
      --out "$out/students.jsonl"
  done
done
