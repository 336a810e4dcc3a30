"""Cost of the divergence guard's checkpoint probe vs one training step (small digits U-Net, batch 128).

Run: PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/guard_probe_cost.py (docs/BENCHMARKS.md).
"""

import statistics
import time

import torch

from fewstep.data import load_dataset
from fewstep.data.batches import TensorSource
from fewstep.train.edm import EDMTraining
from fewstep.train.teacher import make_teacher, resolve_train_config

cfg = resolve_train_config({"dataset": "digits", "preset": "small", "device": "cpu"})
data = load_dataset("digits")
torch.manual_seed(0)
method = EDMTraining(make_teacher(cfg, data))
source = TensorSource(data.train, data.train_labels, 0)
optimizer = torch.optim.Adam(method.modules["model"].parameters(), 1e-4)
step_s, probe_s = [], []
for i in range(6):  # interleaved: a training step, then the probe as train/loop.py's _unhealthy runs it
    batch = source.batch(i, cfg.batch_size, 0, 1, torch.device("cpu"))
    t = time.perf_counter()
    optimizer.zero_grad()
    method.losses(batch)["model"].backward()
    optimizer.step()
    step_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        method.losses(batch)
    probe_s.append(time.perf_counter() - t)
step, probe = statistics.median(step_s[1:]), statistics.median(probe_s[1:])
print(f"step {step * 1e3:.0f} ms, probe {probe * 1e3:.0f} ms, probe/step {probe / step:.2f}; "
      f"at checkpoint_every {cfg.checkpoint_every}: {probe / step / cfg.checkpoint_every * 100:.3f} % of training time")
