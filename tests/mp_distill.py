"""Run by tests/test_multiprocess.py, under torchrun or alone: `fewstep distill` of every registered method in turn
(one process start and one import for all of them), each into OUT/METHOD; then DMD2 with its regression term, whose
generator takes the pairs in the same pass as its samples (OUT/dmd2-regression)."""

import sys
from pathlib import Path

from fewstep.cli import main
from fewstep.distill import METHODS

teacher, out = sys.argv[1], Path(sys.argv[2])
RUNS = {method: ["--method", method] for method in METHODS}
RUNS["dmd2-regression"] = ["--method", "dmd2", "--dmd-regression-weight", "0.25", "--dmd-regression-pairs", "16",
                           "--dmd-fake-updates", "1"]
for name, args in RUNS.items():
    code = main(["distill", *args, "--preset", "tiny", "--steps", "1", "--device", "auto", "--train-steps", "3",
                 "--teacher", teacher, "--out", str(out / name)])
    if code:
        sys.exit(f"{name}: exit {code}")
