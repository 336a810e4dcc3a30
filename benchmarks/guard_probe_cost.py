"""Cost of the divergence guard's checkpoint probe vs one training step (small digits preset, batch 128; docs/BENCHMARKS.md)."""
import statistics, time, torch
from fewstep.data import load_dataset
from fewstep.data.batches import TensorSource
from fewstep.train.edm import EDMTraining
from fewstep.train.teacher import make_teacher, resolve_train_config
cfg = resolve_train_config({"dataset": "digits", "preset": "small", "device": "cpu"})
data = load_dataset("digits"); torch.manual_seed(0)
method = EDMTraining(make_teacher(cfg, data)); src = TensorSource(data.train, data.train_labels, 0)
opt = torch.optim.Adam(method.modules["model"].parameters(), 1e-4)
step_s, probe_s = [], []
for i in range(6):  # interleaved: a training step, then a probe (forward under no_grad, as train/loop.py _unhealthy)
    b = src.batch(i, 128, 0, 1, torch.device("cpu"))
    t = time.perf_counter(); opt.zero_grad(); method.losses(b)["model"].backward(); opt.step(); step_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch.no_grad(): method.losses(b)
    probe_s.append(time.perf_counter() - t)
s, p = statistics.median(step_s[1:]), statistics.median(probe_s[1:])
print(f"step {s*1e3:.0f} ms, probe {p*1e3:.0f} ms, probe/step {p/s:.2f}; per checkpoint_every=500: {p/s/500*100:.3f} % of training time")
