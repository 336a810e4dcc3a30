"""Run by tests/test_multiprocess.py, under torchrun or alone: `fewstep distill` of every registered method in turn
(one process start and one import for all of them), each into OUT/METHOD."""

import sys
from pathlib import Path

from fewstep.cli import main
from fewstep.distill import METHODS

teacher, out = sys.argv[1], Path(sys.argv[2])
for method in METHODS:
    code = main(["distill", "--method", method, "--preset", "tiny", "--steps", "1", "--device", "auto",
                 "--train-steps", "3", "--teacher", teacher, "--out", str(out / method)])
    if code:
        sys.exit(f"{method}: exit {code}")
