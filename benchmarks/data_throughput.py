"""Load throughput (images/s) of the folder and WebDataset-shard readers, in memory and streamed.

Writes N JPEG photos-like images (smooth colour fields with noise, like real photos compress) as a folder and as
tar shards, then times: reading the folder into memory, reading the shards into memory, and streaming batches
through StreamSource (DataLoader workers) from each.
Usage: python benchmarks/data_throughput.py [--n 2000] [--size 256] [--resolution 64] [--workers 0,1,2] [--repeats 3]
Each number is the median of --repeats runs; streaming restarts its DataLoader at every repeat (as a resume does).
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewstep.data import load_dataset, parse_spec
from fewstep.data.items import materialize
from fewstep.data.sources import open_items
from fewstep.data.batches import TensorSource
from fewstep.data.stream import StreamSource


def photo(i: int, size: int) -> bytes:
    """A JPEG (quality 90) of a smooth random colour field with pixel noise."""
    rng = np.random.default_rng(i)
    coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32)
    noisy = np.clip(field + rng.normal(0, 8, field.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write(root: Path, n: int, size: int, per_shard: int = 500) -> tuple[Path, Path]:
    folder, shards = root / "folder", root / "shards"
    folder.mkdir()
    shards.mkdir()
    tar = None
    for i in range(n):
        data = photo(i, size)
        (folder / f"{i:06d}.jpg").write_bytes(data)
        if i % per_shard == 0:
            tar = tarfile.open(shards / f"shard-{i // per_shard:05d}.tar", "w")
        for ext, payload in (("jpg", data), ("txt", f"photo {i}".encode())):
            info = tarfile.TarInfo(f"{i:06d}.{ext}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        if i % per_shard == per_shard - 1 or i == n - 1:
            tar.close()
    return folder, shards


def timed(fn, repeats: int = 1) -> float:
    """Median seconds of `repeats` calls (the machine may be shared: the median resists a busy neighbour)."""
    seconds = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t)
    return float(np.median(seconds))


def training_rate(resolution: int, batch: int, preset: str, steps: int = 5) -> float:
    """Images/s one EDM training step of a `preset` U-Net consumes at this resolution (the rate loading must beat)."""
    from fewstep.core.precond import EDMPrecond
    from fewstep.models.networks import build_network, call_network
    from fewstep.train.edm import EDMTraining

    torch.manual_seed(0)
    denoiser = EDMPrecond(build_network("unet", preset, (3, resolution, resolution), 0), call_network, 0.5)
    method, opt = EDMTraining(denoiser), torch.optim.Adam(denoiser.parameters(), 1e-4)
    x = torch.rand(batch, 3, resolution, resolution) * 2 - 1

    def step(s: int) -> None:
        loss = method.losses(TensorSource(x, None, 0).batch(s, batch, 0, 1, torch.device("cpu")))["model"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    step(0)  # warm-up
    return batch / timed(lambda: [step(s) for s in range(1, steps + 1)]) * steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-preset", default="small", help="the U-Net whose training step rate loading must beat")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = write(Path(tmp), args.n, args.size)
        megabytes = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        print(f"{args.n} JPEGs {args.size}x{args.size} ({megabytes:.0f} MiB) -> {args.resolution}x{args.resolution}; "
              f"{os.cpu_count()} CPUs; torch {torch.__version__}")
        for kind, path in (("folder", folder), ("shards", shards)):
            spec = parse_spec(f"{kind}:{path}?resolution={args.resolution}&stream=true")
            index_seconds = timed(lambda: open_items(spec))
            items = open_items(spec)
            print(f"{kind}: listing / index {index_seconds:.2f} s")
            for w in (int(v) for v in args.workers.split(",")):
                seconds = timed(lambda: materialize(items, torch.arange(len(items)), workers=w), args.repeats)
                print(f"  {kind} read into memory, {w} workers: {args.n / seconds:7.0f} images/s")
                source = StreamSource(items, torch.arange(len(items)), seed=0, workers=w)
                source.batch(0, args.batch, 0, 1, torch.device("cpu"))  # start the workers
                steps = args.n // args.batch
                seconds = timed(lambda: [source.batch(s, args.batch, 0, 1, torch.device("cpu"))
                                         for s in range(1, steps + 1)], args.repeats)  # each repeat restarts at 1
                source.close()
                print(f"  {kind} streamed (StreamSource, batch {args.batch}), {w} workers: "
                      f"{steps * args.batch / seconds:7.0f} images/s")
        seconds = timed(lambda: load_dataset(f"folder:{folder}?resolution={args.resolution}"), args.repeats)
        print(f"load_dataset(folder) end to end (listing, split, read with default workers): {args.n / seconds:.0f} "
              "images/s")
    print(f"training step rate, {args.train_preset} U-Net at {args.resolution}x{args.resolution}, batch {args.batch}: "
          f"{training_rate(args.resolution, args.batch, args.train_preset):.0f} images/s")


if __name__ == "__main__":
    main()
