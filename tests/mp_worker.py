"""Run by tests/test_multiprocess.py under torchrun: train a few steps, dump this rank's final weights."""

import sys
from pathlib import Path

from safetensors.torch import save_file

from fewstep.train.teacher import resolve_train_config, make_teacher
from fewstep.data import load_dataset
from fewstep.train.edm import EDMTraining
from fewstep.data.batches import TensorSource
from fewstep.train.loop import make_accelerator, run_loop

import torch

out = Path(sys.argv[1])
cfg = resolve_train_config({"dataset": "digits", "preset": "tiny", "device": "cpu", "steps": 4, "batch_size": 16,
                            "checkpoint_every": 0, "ema_halflife_steps": 2})
data = load_dataset("digits")
torch.manual_seed(cfg.seed)
teacher = make_teacher(cfg, data)
acc = make_accelerator("cpu", "no")
modules = run_loop(EDMTraining(teacher), TensorSource(data.train, data.train_labels, cfg.seed), cfg.loop(), out / f"run{acc.num_processes}", accelerator=acc)
save_file({k: v.contiguous() for k, v in modules["model"].state_dict().items()},
          out / f"world{acc.num_processes}-rank{acc.process_index}.safetensors")
