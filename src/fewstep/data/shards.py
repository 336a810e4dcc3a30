"""WebDataset tar shards (`key.jpg` with `key.txt` / `key.cls` beside it), indexed once by their headers and then
read item by item with a seek, so a set larger than memory streams and each process reads only its own items."""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fewstep.core.errors import UserError
from fewstep.data.images import IMAGE_SUFFIXES
from fewstep.data.items import ImageItems, index_labels, require_all_captions
from fewstep.data.spec import DataSpec, data_files

KEY_EXTENSION = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's key.ext split: ext starts at the first dot
IMAGE_EXTENSIONS = {s[1:] for s in IMAGE_SUFFIXES}
TEXT_EXTENSIONS = ("txt", "caption", "text")
LABEL_EXTENSIONS = ("cls", "label")
OPEN_SHARDS = 64  # shard files each process keeps open


def _members(path: Path) -> dict[str, dict[str, tarfile.TarInfo]]:
    """Members of one shard grouped by key: {key: {extension: member}}, in shard order."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(path, "r:") as tar:  # "r:" refuses compressed shards, which cannot be read with seeks
            for m in tar:
                match = KEY_EXTENSION.match(m.name)
                if m.isfile() and match:
                    samples.setdefault(match[1], {})[match[2].lower()] = m
    except tarfile.ReadError as e:
        raise UserError(f"{path}: not an uncompressed tar shard ({e}); write shards as plain .tar") from None
    return samples


def _read(handle: BinaryIO, member: tarfile.TarInfo) -> bytes:
    handle.seek(member.offset_data)
    return handle.read(member.size)


class ShardItems(ImageItems):
    """Every sample with an image in a .tar shard or a folder of them, in shard and key order."""

    def __init__(self, spec: DataSpec):
        shards = [f for f in data_files(Path(spec.path)) if f.suffix == ".tar"]
        if not shards:
            raise UserError(f"{spec.path} holds no .tar shards")
        shard, image, text, labels, names = [], [], [], [], []
        for s, path in enumerate(shards):
            with path.open("rb") as handle:
                for key, parts in _members(path).items():
                    image_ext = next((e for e in parts if e in IMAGE_EXTENSIONS), None)
                    if image_ext is None:
                        continue
                    text_ext = next((e for e in TEXT_EXTENSIONS if e in parts), None)
                    label_ext = next((e for e in LABEL_EXTENSIONS if e in parts), None)
                    shard.append(s)
                    image.append((parts[image_ext].offset_data, parts[image_ext].size))
                    text.append((parts[text_ext].offset_data, parts[text_ext].size) if text_ext else None)
                    labels.append(_read(handle, parts[label_ext]).decode().strip() if label_ext else None)
                    names.append(f"{path.name}:{key}")
        if not shard:
            kinds = " / ".join(f"key.{e}" for e in sorted(IMAGE_EXTENSIONS))
            raise UserError(f"the shards under {spec.path} hold no images ({kinds})")
        self.has_text = require_all_captions(text, names)
        labelled = None not in labels
        if labelled and all(v.lstrip("-").isdigit() for v in labels):
            labels = [int(v) for v in labels]  # numeric classes sort as numbers
        self.labels, self.classes = index_labels(labels) if labelled else (None, [])
        self.paths = [str(p) for p in shards]
        self.shard = np.array(shard, np.int32)
        self.image = np.array(image, np.int64)
        self.text = np.array(text if self.has_text else [(0, 0)] * len(shard), np.int64)
        self.names = names
        self._handles: dict[int, BinaryIO] = {}
        self.decode_as(spec)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}  # each worker process opens the shards itself

    def _bytes(self, i: int, where: np.ndarray) -> bytes:
        s = int(self.shard[i])
        if s not in self._handles:
            if len(self._handles) >= OPEN_SHARDS:
                self._handles.pop(next(iter(self._handles))).close()  # the least recently opened
            self._handles[s] = open(self.paths[s], "rb")
        # pread: a positional read, so forked workers may share an inherited file and its offset
        return os.pread(self._handles[s].fileno(), int(where[i, 1]), int(where[i, 0]))

    def __len__(self) -> int:
        return len(self.shard)

    def source(self, i: int) -> bytes:
        return self._bytes(i, self.image)

    def name(self, i: int) -> str:
        return self.names[i]

    def caption(self, i: int) -> str:
        if not self.has_text:
            return ""
        try:
            return self._bytes(i, self.text).decode("utf-8").strip()
        except UnicodeDecodeError:
            raise UserError(f"{self.names[i]}: caption is not UTF-8 text; re-write it as UTF-8") from None

