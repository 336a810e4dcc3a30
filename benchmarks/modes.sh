#!/usr/bin/env bash
# Mode coverage of one-step distribution-matching students on a 2-D mixture of 24 modes whose weights span 25x
# (issue: DMD2 without mode dropping). Writes OUT/modes.npz, a small MLP teacher, DMD2 and SiD students, and one
# eval row each (n = 4000) with sw2, mmd and mode coverage against held-out points of the mixture.
# Usage: [TEACHER_STEPS=3000] bash benchmarks/modes.sh OUT [extra distill flags, e.g. --train-steps 600]
set -euo pipefail
out=${1:?usage: modes.sh OUT}; shift
mkdir -p "$out"
python - "$out/modes.npz" <<'PY'
import sys
import numpy as np
rng = np.random.default_rng(0)
angles = np.arange(24) * 2 * np.pi / 24
centres = np.stack([np.cos(angles), np.sin(angles)], 1) * np.where(np.arange(24) % 2, 2.0, 3.2)[:, None]
weights = 25.0 ** (-np.arange(24) / 23)  # heaviest / lightest = 25
weights = weights[rng.permutation(24)] / weights.sum()
which = rng.choice(24, size=40000, p=weights)
x = centres[which] + 0.08 * rng.normal(size=(40000, 2))
np.savez(sys.argv[1], x=x.astype(np.float32), centres=centres.astype(np.float32), weights=weights)
PY
[ -d "$out/teacher/model" ] || fewstep train --dataset "points:$out/modes.npz" --preset small --steps "${TEACHER_STEPS:-3000}" --out "$out/teacher"
fewstep eval --model "$out/teacher" --n 4000 --json --no-agreement --results "$out/results.jsonl"
for method in dmd2 sid; do
  [ -d "$out/$method/model" ] || fewstep distill --teacher "$out/teacher" --method "$method" --steps 1 --preset small \
    --out "$out/$method" "$@"
  fewstep eval --model "$out/$method" --n 4000 --json --no-agreement --results "$out/results.jsonl"
done
