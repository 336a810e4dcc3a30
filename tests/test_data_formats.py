"""A user's own data: every format round-trips, odd image modes decode exactly, streaming draws what memory draws,
ranks split the global batch, memory stays flat, and every bad input is one line."""

import csv
import gc
import io
import json
import shutil
import struct
import tarfile
import zlib

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

from fewstep.core.cond import Cond
from fewstep.core.errors import UserError
from fewstep.data import (DataSpec, dataset_from_tensors, dataset_from_torch, load_dataset, parse_spec, recorded_spec)
from fewstep.data.images import decode_image
from fewstep.data.items import STATS_ITEMS, Items
from fewstep.data.prompts import read_prompts
from fewstep.data.sources import open_items, probe
from fewstep.data.stream import StreamSource, batch_source

CPU = torch.device("cpu")


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def colour(i: int) -> tuple[int, int, int]:
    """A distinct 8-bit colour per item, so a decoded pixel says which item it is."""
    return (i * 5) % 256, (i * 3 + 7) % 256, 200


def item_ids(x: torch.Tensor) -> list[int]:
    """Item numbers from the red channel of decoded colour() images."""
    return [round(float(v) * 255 / 5) for v in (x[:, 0, 0, 0] + 1) / 2]


def colour_folder(root, n, size=(6, 4), classes=0, captions="jsonl"):
    """n single-colour PNGs; class sub-folders when classes > 0; captions in metadata.jsonl, .txt sidecars or none."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        folder = root / f"class{i % classes}" if classes else root
        folder.mkdir(exist_ok=True)
        path = folder / f"img{i:03d}.png"
        Image.new("RGB", size, colour(i)).save(path)
        if captions == "txt":
            path.with_suffix(".txt").write_text(f"item {i}\n")
        rows.append({"file_name": str(path.relative_to(root)), "text": f"item {i}"})
    if captions == "jsonl":
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


# ---------------------------------------------------------------------------------------------- vectors / points

def write_points(path, x, labels, centres):
    suffix = path.suffix
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".npz":
        np.savez(path, x=x, labels=labels, centres=centres)
    elif suffix == ".safetensors":
        from safetensors.numpy import save_file
        save_file({"x": x, "labels": labels, "centres": centres}, str(path))
    else:
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["a", "b", "c", "label"])
            w.writerows([[*map(repr, map(float, row)), int(y)] for row, y in zip(x, labels)])


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv", ".safetensors"])
def test_points_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    labels = (np.arange(50) % 3).astype(np.int64)
    centres = np.eye(3, dtype=np.float32)
    path = tmp_path / f"pts{suffix}"
    write_points(path, x, labels, centres)
    d = load_dataset(f"points:{path}")
    assert d.kind == "vector" and d.shape == (3,) and len(d.train) == 45 and len(d.test) == 5
    every = torch.cat([d.train, d.test])
    order = torch.from_numpy(x).sort(0).values
    assert torch.equal(every.sort(0).values, order)  # every point, exactly, in one split or the other
    if suffix != ".npy":
        assert d.num_classes == 3
        by_row = {tuple(r.tolist()): int(y) for r, y in zip(torch.from_numpy(x), labels)}
        assert all(by_row[tuple(r.tolist())] == int(y) for r, y in zip(d.train, d.train_labels))
    if suffix in (".npz", ".safetensors"):
        assert torch.equal(d.centres, torch.eye(3))
    assert torch.equal(load_dataset(f"points:{path}").test, d.test)  # the split is seeded
    assert not torch.equal(load_dataset(f"points:{path}?split_seed=1").test, d.test)
    assert d.spec.options["test_fraction"] == 0.1 and d.spec.options["split_seed"] == 0 and d.spec.content_hash
    b = batch_source(d, seed=3).batch(0, 8, 0, 1, CPU)
    assert b.x.shape == (8, 3) and all(any(torch.equal(r, t) for t in d.train) for r in b.x)


@pytest.mark.parametrize("name,content,match", [
    ("empty.csv", "", "is empty"),
    ("ragged.csv", "1,2\n3,4\n5\n", r"ragged.csv:3: 1 values where the first row has 2"),
    ("words.csv", "1,2\n3,x\n", r"words.csv:2: 'x' is not a number"),
    ("nan.csv", "1,2\nnan,4\n5,6\n", "1 points rows hold NaN or infinite values \\(first: row 1\\)"),
    ("header.csv", "a,b\n", "a header but no points"),
])
def test_points_bad_inputs_are_one_line(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=match) as e:
        load_dataset(f"points:{tmp_path / name}")
    one_line(e)


def test_points_bad_arrays_are_one_line(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[0.0, 1.0], [np.inf, 2.0]]))
    np.savez(tmp_path / "labels.npz", x=np.zeros((4, 2)), labels=np.zeros(3))
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 2)))
    for name, match in [("nan.npy", "NaN or infinite"), ("labels.npz", "3 labels for 4 points"),
                        ("broken.npy", "not a readable .npy"), ("empty.npy", r"shape \(0, 2\)")]:
        with pytest.raises(UserError, match=match) as e:
            load_dataset(f"points:{tmp_path / name}")
        one_line(e)


# ---------------------------------------------------------------------------------------------- image decoding

def _png16_rgb(path, w, h, rgb16):
    """A 48-bit RGB PNG written by hand (PIL cannot write one)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + struct.pack(">HHH", *rgb16) * w for _ in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _palette(transparent: bool) -> Image.Image:
    im = Image.new("P", (6, 4), 1)
    im.putpalette([255, 0, 0, 0, 255, 0])
    if transparent:
        im.info["transparency"] = 1
    return im


MODES = {  # image, file suffix, expected RGB in [0, 1]
    "RGB": (Image.new("RGB", (6, 4), (10, 200, 30)), ".png", np.array([10, 200, 30]) / 255),
    "L": (Image.new("L", (6, 4), 77), ".png", np.array([77] * 3) / 255),
    "1": (Image.new("1", (6, 4), 1), ".png", np.ones(3)),
    "P": (_palette(False), ".png", np.array([0, 1, 0])),
    "P+transparency": (_palette(True), ".png", np.ones(3)),  # fully transparent over white
    "RGBA": (Image.new("RGBA", (6, 4), (255, 0, 0, 128)), ".png", np.array([1, 127 / 255, 127 / 255])),
    "LA": (Image.new("LA", (6, 4), (100, 51)), ".png", np.array([100 / 255 * 0.2 + 0.8] * 3)),
    "CMYK": (Image.new("CMYK", (6, 4), (10, 20, 30, 40)), ".jpg", None),
    "I;16 png": (Image.fromarray(np.full((4, 6), 43981, np.uint16)), ".png", np.array([43981 / 65535] * 3)),
    "I;16 tiff": (Image.fromarray(np.full((4, 6), 43981, np.uint16)), ".tif", np.array([43981 / 65535] * 3)),
    "I": (Image.fromarray(np.full((4, 6), 30000, np.int32)), ".tif", np.array([30000 / 65535] * 3)),
    "F": (Image.fromarray(np.full((4, 6), 0.25, np.float32)), ".tif", np.array([0.25] * 3)),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_image_modes_decode_exactly(tmp_path, mode):
    im, suffix, expected = MODES[mode]
    path = tmp_path / f"im{suffix}"
    im.save(path) if suffix != ".jpg" else im.save(path, quality=100)
    x = decode_image(path, resolution=4)
    if mode == "CMYK":  # JPEG is lossy: compare with PIL's own CMYK -> RGB of what was stored
        expected = np.asarray(Image.open(path).convert("RGB"), np.float64)[0, 0] / 255
    assert x.shape == (3, 4, 4)
    assert np.abs(x.double().numpy() - (expected[:, None, None] * 2 - 1)).max() < 1e-5


def test_16_bit_rgb_and_greyscale_channels(tmp_path):
    _png16_rgb(tmp_path / "rgb48.png", 5, 3, (0xABCD, 0x0102, 0xFFFF))
    x = (decode_image(tmp_path / "rgb48.png", resolution=3) + 1) / 2
    expected = torch.tensor([0xABCD, 0x0102, 0xFFFF]) / 65535  # PIL keeps each channel's high byte
    assert (x[:, 0, 0] - expected).abs().max() < 1 / 255
    Image.new("RGB", (4, 4), (10, 200, 30)).save(tmp_path / "rgb.png")
    grey = decode_image(tmp_path / "rgb.png", resolution=4, channels=1)
    assert grey.shape == (1, 4, 4)
    assert abs(float((grey[0, 0, 0] + 1) / 2) - (0.299 * 10 + 0.587 * 200 + 0.114 * 30) / 255) < 1e-6


def test_center_crop_keeps_the_middle_and_squash_keeps_everything(tmp_path):
    a = np.zeros((8, 12, 3), np.uint8)
    a[:, :2], a[:, 2:10], a[:, 10:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    Image.fromarray(a).save(tmp_path / "wide.png")
    cropped = (decode_image(tmp_path / "wide.png", resolution=8, center_crop=True) + 1) / 2
    assert torch.allclose(cropped, torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 8, 8), atol=1e-6)
    squashed = (decode_image(tmp_path / "wide.png", resolution=8) + 1) / 2
    assert squashed[0, :, 0].min() > 0.5 and squashed[2, :, -1].min() > 0.5  # red left edge, blue right edge


def test_unreadable_and_nan_images_are_one_line(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    Image.fromarray(np.full((2, 2), np.nan, np.float32)).save(tmp_path / "nan.tif")
    for name in ("bad.png", "nan.tif"):
        with pytest.raises(UserError, match=f"{name}: not a readable image") as e:
            decode_image(tmp_path / name, resolution=2)
        one_line(e)
    colour_folder(tmp_path, 4, captions="none")  # found by a DataLoader worker, mid-stream: still one line
    source = StreamSource(open_items(parse_spec(f"folder:{tmp_path}?resolution=2")), torch.arange(6), workers=1)
    with pytest.raises(UserError, match=r"^\S*(bad.png|nan.tif): not a readable image") as e:
        for step in range(20):
            source.batch(step, 4, 0, 1, CPU)
    one_line(e)


# ---------------------------------------------------------------------------------------------- image folders

def check_captioned(d, n):
    """Every item's caption names the item its pixels encode; train and test cover the n items once."""
    ids = item_ids(d.train) + item_ids(d.test)
    assert sorted(ids) == list(range(n))
    assert d.train_text == [f"item {i}" for i in item_ids(d.train)]
    assert d.test_text == [f"item {i}" for i in item_ids(d.test)]


def test_folder_imagefolder_metadata_sidecars_and_classes(tmp_path):
    d = load_dataset(f"folder:{colour_folder(tmp_path / 'meta', 20)}")
    assert d.shape == (3, 4, 4) and d.num_classes == 0  # resolution 0: the first image's shorter side
    check_captioned(d, 20)
    assert torch.allclose((d.train[0, :, 0, 0] + 1) / 2 * 255, torch.tensor(colour(item_ids(d.train)[0])).float(),
                          atol=1e-4)
    d = load_dataset(f"folder:{colour_folder(tmp_path / 'txt', 20, classes=2, captions='txt')}", resolution=2)
    assert d.shape == (3, 2, 2) and d.num_classes == 2 and d.meta["classes"] == ["class0", "class1"]
    check_captioned(d, 20)
    assert [int(y) for y in d.train_labels] == [i % 2 for i in item_ids(d.train)]
    root = colour_folder(tmp_path / "csv", 10, captions="none")
    with (root / "metadata.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file_name", "prompt"])
        w.writerows([[f"img{i:03d}.png", f"item {i}"] for i in range(10)])
    check_captioned(load_dataset(f"folder:{root}"), 10)


def test_folder_caption_errors_are_one_line(tmp_path):
    root = colour_folder(tmp_path / "a", 4, captions="none")
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "img000.png", "description": "x"}) + "\n")
    with pytest.raises(UserError, match="has no caption column text / caption / prompt") as e:
        load_dataset(f"folder:{root}")
    one_line(e)
    with pytest.raises(UserError, match="caption column 'words'"):
        load_dataset(f"folder:{root}?caption_column=words")
    root = colour_folder(tmp_path / "b", 4, captions="none")
    (root / "img001.txt").write_text("only one")
    with pytest.raises(UserError, match=r"3 of 4 items have no caption \(first: img000.png\)") as e:
        load_dataset(f"folder:{root}")
    one_line(e)
    (root / "img001.txt").write_bytes(b"\xff\xfe bad")
    with pytest.raises(UserError, match="img001.txt is not UTF-8") as e:
        load_dataset(f"folder:{root}")
    one_line(e)


# ---------------------------------------------------------------------------------------------- datasets / parquet

def png_bytes(i: int, size=(6, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour(i)).save(buf, format="PNG")
    return buf.getvalue()


def test_hf_save_to_disk_and_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["even", "odd"])})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": png_bytes(i), "path": None} for i in range(12)],
                                     "text": [f"item {i}" for i in range(12)], "label": [i % 2 for i in range(12)]},
                                    features=features)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "saved"))
    d = load_dataset(f"hf:{tmp_path / 'saved'}")
    check_captioned(d, 12)
    assert d.meta["classes"] == ["even", "odd"]
    assert [int(y) for y in d.train_labels] == [i % 2 for i in item_ids(d.train)]
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"png": [png_bytes(i) for i in range(12)], "caption": [f"item {i}" for i in range(12)]}),
                   tmp_path / "part.parquet")
    d = load_dataset(f"hf:{tmp_path / 'part.parquet'}")
    check_captioned(d, 12)
    with pytest.raises(UserError, match="no caption column 'words'") as e:
        load_dataset(f"hf:{tmp_path / 'part.parquet'}?caption_column=words")
    one_line(e)
    with pytest.raises(UserError, match="no split 'valid'"):
        load_dataset(f"hf:{tmp_path / 'saved'}?split=valid")


# ---------------------------------------------------------------------------------------------- webdataset shards

def write_shards(root, n, per_shard=10, size=(6, 4), captions=True):
    root.mkdir(parents=True, exist_ok=True)
    for s in range(0, n, per_shard):
        with tarfile.open(root / f"shard-{s // per_shard:05d}.tar", "w") as tar:
            for i in range(s, min(n, s + per_shard)):
                members = {"png": png_bytes(i, size), "cls": str(i % 3).encode()}
                if captions:
                    members["txt"] = f"item {i}".encode()
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def test_shards_round_trip_streamed(tmp_path):
    root = write_shards(tmp_path / "shards", 25)
    d = load_dataset(f"shards:{root}")
    assert d.streamed is not None and len(d.streamed.items) == 25 and d.num_classes == 3
    check_captioned(d, 25)  # a set this small is all in the statistics sample
    source = batch_source(d, seed=5, workers=0)
    b = source.batch(2, 6, 0, 1, CPU)
    assert b.text == [f"item {i}" for i in item_ids(b.x)] and b.cond.tolist() == [i % 3 for i in item_ids(b.x)]
    assert_same_batches(source, batch_source(d, seed=5, workers=2), range(4))  # forked workers read their own files

    def encode(captions):  # a stand-in text encoder: the item number as a 1-token "embedding"
        return Cond(text=torch.tensor([[[float(c.split()[1])]] for c in captions]))

    b = batch_source(d, seed=5, workers=0, encode_text=encode).batch(2, 6, 0, 1, CPU)
    assert b.cond.text.flatten().tolist() == item_ids(b.x)
    with pytest.raises(UserError, match="not an uncompressed tar shard") as e:
        (tmp_path / "gz").mkdir()
        with tarfile.open(tmp_path / "gz" / "a.tar", "w:gz") as tar:
            tar.add(root / "shard-00000.tar", "x.png")
        load_dataset(f"shards:{tmp_path / 'gz'}")
    one_line(e)


# ---------------------------------------------------------------------------------------------- streaming

def assert_same_batches(a, b, steps, global_size=8):
    for step in steps:
        x, y = a.batch(step, global_size, 0, 1, CPU), b.batch(step, global_size, 0, 1, CPU)
        assert torch.equal(x.x, y.x) and torch.equal(x.cond, y.cond) and x.text == y.text
        assert torch.equal(x.randn(3), y.randn(3))  # the step generator is left in the same state


def test_streaming_equals_in_memory_and_resumes(tmp_path):
    spec = f"folder:{colour_folder(tmp_path / 'f', 40, classes=4)}"
    memory, streamed = load_dataset(spec), load_dataset(spec + "?stream=true")
    assert streamed.streamed is not None and memory.streamed is None
    assert torch.equal(memory.test, streamed.test) and torch.equal(memory.train[:STATS_ITEMS], streamed.train)
    assert_same_batches(batch_source(memory, 11), batch_source(streamed, 11, workers=0), range(5))
    assert_same_batches(batch_source(memory, 11), batch_source(streamed, 11, workers=2), [0, 1, 2, 7, 8, 3])
    assert_same_batches(batch_source(memory, 11), batch_source(streamed, 11, workers=0), [5, 6])  # a resumed run
    assert not torch.equal(batch_source(streamed, 12, workers=0).batch(0, 8, 0, 1, CPU).x,
                           batch_source(streamed, 11, workers=0).batch(0, 8, 0, 1, CPU).x)


class Recording(Items):
    """Items that note which indices this process read."""

    def __init__(self, items):
        self.inner, self.read = items, []
        self.shape, self.classes, self.has_text = items.shape, items.classes, items.has_text

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.read.append(i)
        return self.inner[i]


def test_ranks_read_disjoint_rows_that_make_the_global_batch(tmp_path):
    spec = parse_spec(f"folder:{colour_folder(tmp_path / 'f', 30, captions='none')}", stream=True)
    items = open_items(spec)
    index = torch.arange(30)
    world1 = StreamSource(items, index, seed=4, workers=0)
    ranks = [StreamSource(Recording(items), index, seed=4, workers=0) for _ in range(2)]
    for step in range(3):
        whole = world1.batch(step, 8, 0, 1, CPU)
        parts = [r.batch(step, 8, rank, 2, CPU) for rank, r in enumerate(ranks)]
        assert torch.equal(torch.cat([p.x for p in parts]), whole.x)
        assert torch.equal(torch.cat([p.randn(2) for p in parts]), whole.randn(2))
    reads = [r.items.read for r in ranks]
    assert len(reads[0]) == len(reads[1]) == 12  # 3 steps x 4 rows each: no process reads another's rows
    from fewstep.data.batches import draw_items
    drawn = [draw_items(4, s, 30, 8)[1] for s in range(3)]
    assert reads[0] == [i for d in drawn for i in d[:4].tolist()]
    assert reads[1] == [i for d in drawn for i in d[4:].tolist()]


def test_streaming_memory_stays_flat(tmp_path):
    n, res, cap = 200, 256, 32 * 2**20
    root = tmp_path / "big"
    root.mkdir()
    for i in range(n):
        Image.new("RGB", (res, res), colour(i)).save(root / f"{i:04d}.png")  # tiny files, 786 KB each decoded
    decoded = n * 3 * res * res * 4
    assert decoded > 3 * cap
    source = StreamSource(open_items(parse_spec(f"folder:{root}", stream=True)), torch.arange(n), workers=0)
    process = psutil.Process()
    for step in range(5):  # warm up allocator and interpolation buffers
        source.batch(step, 4, 0, 1, CPU)
    gc.collect()
    start, peak = process.memory_info().rss, 0
    for step in range(5, 105):  # 400 items read: each about twice
        source.batch(step, 4, 0, 1, CPU)
        peak = max(peak, process.memory_info().rss)
    assert peak - start < cap, f"RSS grew by {(peak - start) / 2**20:.0f} MiB while streaming"


# ---------------------------------------------------------------------------------------------- prompts

def test_prompts_file(tmp_path):
    (tmp_path / "p.txt").write_bytes("\ufeffa red fox\n\n  a blue car  \r\nnaïve café\n".encode())
    assert read_prompts(tmp_path / "p.txt") == ["a red fox", "a blue car", "naïve café"]
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    for name, match in [("empty.txt", "holds no prompts"), ("latin1.txt", "is not UTF-8"),
                        ("none.txt", "does not exist")]:
        with pytest.raises(UserError, match=match) as e:
            read_prompts(tmp_path / name)
        one_line(e)


# ---------------------------------------------------------------------------------------------- recording

def test_spec_record_finds_the_same_data_or_stops(tmp_path):
    root = colour_folder(tmp_path / "f", 10)
    spec = parse_spec(f"folder:{root}?resolution=2&center_crop=true")
    assert str(spec) == f"folder:{root}?resolution=2&center_crop=true"
    record = json.loads(json.dumps(spec.record()))  # what fewstep.json holds
    assert recorded_spec(record) == spec and DataSpec.from_record(record).options["test_fraction"] == 0.1
    assert torch.equal(load_dataset(recorded_spec(record)).test, load_dataset(spec).test)
    assert load_dataset(f"folder:{root}").spec.options["resolution"] == 4  # "0: the images' own" is recorded as 4
    assert recorded_spec(f"folder:{root}", resolution=2).options["resolution"] == 2  # an old model's bare spec string
    shards = recorded_spec(record, override=f"shards:{write_shards(tmp_path / 's', 3)}")
    assert shards.options["center_crop"] and shards.options["resolution"] == 2 and shards.options["stream"]
    moved = tmp_path / "moved"
    shutil.move(root, moved)
    with pytest.raises(UserError, match="is missing .* pass --dataset") as e:
        recorded_spec(record)
    one_line(e)
    again = recorded_spec(record, override=f"folder:{moved}")  # the user says where it went: same options
    assert again.options == spec.options and again.content_hash == spec.content_hash
    shutil.move(moved, root)
    Image.new("RGB", (6, 4), (1, 2, 3)).save(root / "img003.png")
    with pytest.raises(UserError, match="changed since the model recorded it") as e:
        recorded_spec(record)
    one_line(e)
    for text, match in [(f"folder:{root}?size=3", "unknown option 'size'"), ("pictures:x", "unknown dataset"),
                        (f"folder:{root}?resolution=big", "resolution='big' is not a int"),
                        (f"points:{tmp_path / 'none.npy'}", "does not exist")]:
        with pytest.raises(UserError, match=match) as e:
            parse_spec(text)
        one_line(e)


def test_probe_reads_kind_and_shape_from_the_data(tmp_path):
    np.save(tmp_path / "p.npy", np.zeros((5, 7), np.float32))
    assert probe(parse_spec(f"points:{tmp_path / 'p.npy'}")) == ("vector", (7,))
    root = colour_folder(tmp_path / "f", 3, size=(10, 6))
    assert probe(parse_spec(f"folder:{root}")) == ("image", (3, 6, 6))
    assert probe(parse_spec(f"folder:{root}?resolution=16&channels=1")) == ("image", (1, 16, 16))
    assert probe(parse_spec("moons")) == ("vector", (2,)) and probe(parse_spec("digits")) == ("image", (1, 8, 8))


# ---------------------------------------------------------------------------------------------- Python API

def test_dataset_from_tensors_and_torch(tmp_path):
    x = torch.rand(30, 3, 4, 4) * 2 - 1
    d = dataset_from_tensors(x, labels=torch.arange(30) % 5, text=[f"t{i}" for i in range(30)])
    assert d.kind == "image" and d.num_classes == 5 and len(d.train) == 27
    i = [k for k in range(30) if torch.equal(x[k], d.train[0])][0]
    assert d.train_text[0] == f"t{i}" and int(d.train_labels[0]) == i % 5
    with pytest.raises(UserError, match=r"lie in \[-1, 1\].*x \* 2 - 1") as e:
        dataset_from_tensors(x + 1)
    one_line(e)
    with pytest.raises(UserError, match="passed from Python"):
        recorded_spec(d.spec.record())

    class Pairs(torch.utils.data.Dataset):
        classes = ["a", "b", "c", "d", "e"]

        def __len__(self):
            return 30

        def __getitem__(self, k):
            return x[k], k % 5

    memory, streamed = dataset_from_torch(Pairs()), dataset_from_torch(Pairs(), stream=True)
    assert memory.num_classes == 5 and torch.equal(memory.test, streamed.test)
    assert_same_batches(batch_source(memory, 2), batch_source(streamed, 2, workers=0), range(3))


def test_missing_datasets_package_names_the_extra(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    (tmp_path / "part.parquet").write_bytes(b"PAR1")
    with pytest.raises(UserError, match=r"pip install 'fewstep\[data\]'") as e:
        load_dataset(f"hf:{tmp_path / 'part.parquet'}")
    one_line(e)
