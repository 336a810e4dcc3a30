#!/usr/bin/env bash
# The reports of docs/BENCHMARKS.md §6, regenerated: bench the digits and 8-Gaussians suites (resumable: finished
# rows are kept) and embed their tables, headlines and Pareto plots into docs/BENCHMARKS.md.
# Needs the teachers and students of benchmarks/distill.sh and the searched schedules of benchmarks/accel.sh.
# Usage: bash benchmarks/reports.sh   (about 10 minutes on 2 CPU cores when nothing is cached)
set -euo pipefail
for name in digits 8gaussians; do
  fewstep bench --suite "benchmarks/suites/$name.toml" --out "reports/$name"
  python benchmarks/render_bench.py "reports/$name" "$name"
done
