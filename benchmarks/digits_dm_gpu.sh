#!/usr/bin/env bash
# One-step DMD2 and SiD students of the digits teacher, several learning curves side by side on one GPU (issue 19's
# GPU run, BENCHMARKS §15f). Each curve is benchmarks/distill_curve.py: `fewstep distill` in segments of EVERY steps,
# each segment's student scored by `fewstep eval --n 2000` (seed 0, paired with the teacher's row). Every curve stops
# at SECONDS: the segment cut there is lost, the rows before it stay in OUT/NAME/curve.jsonl.
# Usage: [DEVICE=cuda BATCH=512 EVERY=1000 TOTAL=40000 EXTRA="more distill flags"] bash benchmarks/digits_dm_gpu.sh OUT TEACHER SECONDS
set -uo pipefail
out=${1:?usage: digits_dm_gpu.sh OUT TEACHER SECONDS} teacher=${2:?teacher run} seconds=${3:?seconds}
device=${DEVICE:-cuda} batch=${BATCH:-512} every=${EVERY:-1000} total=${TOTAL:-40000}
mkdir -p "$out"
common=(--teacher "$teacher" --steps 1 --preset small --device "$device" --batch-size "$batch"
        --checkpoint-every "$every" --sample-every 0 ${EXTRA:-})
dmd=(--method dmd2 --dmd-regression-weight 10)

curve() {  # NAME [distill_curve flags] -- [distill flags]: one curve in the background, its log in OUT/NAME.log
  local name=$1; shift
  timeout "$seconds" python benchmarks/distill_curve.py "$out/$name" --every "$every" --total "$total" \
    --eval="--n 2000 --device $device" "$@" >"$out/$name.log" 2>&1 &
}

curve reg10-gan2 --reference "$teacher" -- "${common[@]}" "${dmd[@]}" --dmd-gan-weight 2 --dmd-fake-updates 1
curve reg10-gan2-fake2 -- "${common[@]}" "${dmd[@]}" --dmd-gan-weight 2 --dmd-fake-updates 2
curve reg10-gan2-fake4 -- "${common[@]}" "${dmd[@]}" --dmd-gan-weight 2 --dmd-fake-updates 4
curve reg10-gan5 -- "${common[@]}" "${dmd[@]}" --dmd-gan-weight 5 --dmd-fake-updates 1
curve sid -- "${common[@]}" --method sid --lr 5e-5 --sid-init-sigma 2.5
wait
for log in "$out"/*.log; do echo "== $log"; tail -n 3 "$log"; done
