"""A dataset spec: which data (kind, path, options) and a fingerprint of its files, recorded by every saved model.

A spec string is `KIND:PATH?option=value&...` (`folder:/data/cats?resolution=64&center_crop=true`) or the name of a
built-in set (`digits`). Parsing fills in every option's default, so a record states the data completely, and
fingerprints the files, so a later process that loads the record finds the same data or stops with one line.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fewstep.config import BOOLEAN_WORDS
from fewstep.core.errors import UserError

BUILTIN = ("digits", "8gaussians", "checkerboard", "moons", "swissroll", "shapes", "captions")
SIZED_BUILTIN = ("shapes", "captions")  # built-in sets rendered at a chosen resolution
SPLIT_OPTIONS = {"test_fraction": 0.1, "split_seed": 0, "max_test": 4096}
IMAGE_OPTIONS = {**SPLIT_OPTIONS, "resolution": 0, "center_crop": False, "channels": 3, "stream": False,
                 "caption_column": ""}
OPTIONS: dict[str, dict[str, Any]] = {  # every option of a kind with its default ("" or 0: found in the data)
    "builtin": {"resolution": 32},
    "points": {**SPLIT_OPTIONS, "label_column": ""},
    "folder": IMAGE_OPTIONS,
    "hf": {**IMAGE_OPTIONS, "image_column": "", "label_column": "", "split": "train"},
    "shards": {**IMAGE_OPTIONS, "stream": True},
    "prompts": {},
    "python": {**SPLIT_OPTIONS, "stream": False},  # tensors or a torch Dataset passed in Python
}
SHAPE_OPTIONS = ("resolution", "center_crop", "channels")  # what fixes an image item's shape and framing
KINDS = tuple(k for k in OPTIONS if k not in ("builtin", "python"))
FINGERPRINT_BYTES = 64 * 1024  # read from each end of every file: whole files up to 128 KiB, head and tail above
HIDDEN_OR_CACHE = (".", "__")


@dataclass(frozen=True)
class DataSpec:
    """Which data: kind (built-in name kinds are "builtin"), absolute path (or the name), every option, fingerprint."""

    kind: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""  # fingerprint of the files (see fingerprint); "" for built-in and in-memory data

    def __str__(self) -> str:
        if self.kind == "builtin":
            return self.path
        defaults = OPTIONS.get(self.kind, {})
        changed = [f"{k}={_format(v)}" for k, v in self.options.items() if defaults.get(k) != v]
        return f"{self.kind}:{self.path}" + ("?" + "&".join(changed) if changed else "")

    def option(self, name: str) -> Any:
        """An option's value (its default where the spec does not set it)."""
        return self.options.get(name, OPTIONS[self.kind][name])

    def record(self) -> dict[str, Any]:
        """What a saved model writes into fewstep.json."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "DataSpec":
        """The spec a saved model recorded (the inverse of record)."""
        try:
            return cls(**record)
        except TypeError as e:
            raise UserError(f"the recorded dataset {record!r} is not a dataset spec ({e})") from None


def _format(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _convert(kind: str, name: str, value: Any) -> Any:
    default = OPTIONS[kind][name]
    if not isinstance(value, str) or isinstance(default, str):
        return type(default)(value)
    try:
        if isinstance(default, bool):
            if value.lower() not in BOOLEAN_WORDS:
                raise ValueError(value)
            return BOOLEAN_WORDS[value.lower()]
        return type(default)(value)
    except ValueError:
        raise UserError(f"dataset option {name}={value!r} is not a {type(default).__name__}") from None


def parse_spec(text: str, **options: Any) -> DataSpec:
    """Parse `KIND:PATH?opt=value&...` or a built-in name; keyword options fill in what the string does not set."""
    if text in BUILTIN:
        keep = {"resolution": int(options["resolution"])} if text in SIZED_BUILTIN and options.get("resolution") else {}
        return DataSpec("builtin", text, keep)
    kind, sep, rest = text.partition(":")
    if not sep or kind not in KINDS:
        raise UserError(f"unknown dataset {text!r}; use a built-in ({', '.join(BUILTIN)}) or KIND:PATH with KIND one"
                        f" of {', '.join(KINDS)} (see docs/data.md)")
    path, _, query = rest.partition("?")
    given = dict(pair.partition("=")[::2] for pair in query.split("&") if pair)
    unknown = sorted(set(given) - set(OPTIONS[kind]))
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} for {kind}: data; choose from {', '.join(OPTIONS[kind])}")
    merged = {**OPTIONS[kind], **{k: v for k, v in options.items() if k in OPTIONS[kind] and v is not None}, **given}
    converted = {k: _convert(kind, k, v) for k, v in merged.items()}
    if not path:
        raise UserError(f"dataset {text!r} names no path; write {kind}:PATH")
    resolved = Path(path).expanduser().resolve()
    return DataSpec(kind, str(resolved), converted, fingerprint(resolved))


def data_files(path: Path) -> list[Path]:
    """The files of a dataset: the file itself, or every file under a folder except hidden and cache ones."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"dataset path {path} does not exist; check the path (or move the data back)")
    return sorted((p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(HIDDEN_OR_CACHE) for part in p.relative_to(path).parts)),
                  key=lambda p: p.relative_to(path).as_posix())


def fingerprint(path: Path) -> str:
    """sha256 over every file's relative name, size and first and last 64 KiB (all of a file up to 128 KiB)."""
    root = path if path.is_dir() else path.parent
    h = hashlib.sha256()
    for f in data_files(path):
        size = f.stat().st_size
        h.update(f"{f.relative_to(root).as_posix()}\0{size}\0".encode())
        with f.open("rb") as fh:
            h.update(fh.read(min(size, 2 * FINGERPRINT_BYTES)))
            if size > 2 * FINGERPRINT_BYTES:
                fh.seek(size - FINGERPRINT_BYTES)
                h.update(fh.read())
    return h.hexdigest()[:16]


def verify_spec(spec: DataSpec) -> DataSpec:
    """The spec itself when its files are still there and unchanged; else a one-line UserError saying which."""
    if spec.kind == "builtin":
        return spec
    if not spec.path:
        raise UserError(f"the model was trained on {spec.kind} data passed from Python; pass that data again")
    path = Path(spec.path)
    if not path.exists():
        raise UserError(f"dataset {path} recorded by the model is missing (moved or deleted?); pass --dataset with its"
                        " new place")
    now = fingerprint(path)
    if now != spec.content_hash:
        raise UserError(f"dataset {path} changed since the model recorded it (fingerprint {now} != "
                        f"{spec.content_hash}); restore it, or pass --dataset to use the changed data knowingly")
    return spec


def recorded_spec(record: dict[str, Any] | str, override: str | None = None, **options: Any) -> DataSpec:
    """The data of a saved model in a new process: its verified record, or `override` with the recorded options
    (all of them for the same kind, those that fix the item shape for another); `options` fill in what a record
    does not set (an old model's bare name, e.g. its resolution)."""
    recorded = parse_spec(record, **options) if isinstance(record, str) else DataSpec.from_record(record)
    if override:
        kind = override.partition(":")[0]
        carried = {k: v for k, v in recorded.options.items() if kind == recorded.kind or k in SHAPE_OPTIONS}
        return parse_spec(override, **{**options, **carried})
    return verify_spec(recorded)
