"""Reading and writing artifacts. Every output is written to a temporary name beside it, then
renamed, so a stage killed half-way leaves the previous output intact and DVC never caches half a
file; reads of a missing or corrupt artifact name the stage that rebuilds it."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


class ArtifactError(ValueError):
    """A missing, corrupt or mismatched artifact; the message names the stage that rebuilds it."""


IDENTITY_KEYS = ("model_type", "n_layers", "hidden_size", "vocab_size")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: Path | str):
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path | str):
    """Yield an empty temporary folder beside `path`; on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: Path | str, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, obj) -> None:
    """Indented, key-sorted JSON, so that equal content gives identical bytes."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_csv(path: Path | str, rows: list[dict]) -> None:
    """Rows of dicts as CSV (columns in first-seen order); None is written as an empty cell."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def save_npz(path: Path | str, **arrays) -> None:
    """np.savez, but atomic and byte-deterministic (fixed zip timestamps), so equal arrays give
    identical files and DVC sees no change when nothing changed."""
    with atomic_file(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name in sorted(arrays):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(arrays[name]), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                zf.writestr(info, buf.getvalue())


def load_npz(path: Path | str, what: str, stage: str, error: type[Exception] = ArtifactError) -> dict:
    """All arrays of an npz, with a clear error naming the stage to rerun if missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} not found: run `dvc repro {stage}` first")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise error(f"{what} {path} is truncated or corrupt ({err}); rerun `dvc repro -f {stage}`") from err


def read_meta(path: Path | str, what: str, stage: str, error: type[Exception] = ArtifactError) -> dict:
    """An artifact folder's JSON metadata, with a clear error naming the stage to rerun if missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path.parent} not found (no {path.name}): run `dvc repro {stage}` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise error(f"{path} is corrupt ({err}); rerun `dvc repro -f {stage}`") from err


def check_identity(built_for: dict, model: dict, what: str, error: type[Exception] = ArtifactError) -> None:
    """Refuse an artifact built for another model (the keys both identities hold must agree)."""
    for key in IDENTITY_KEYS:
        if key in built_for and key in model and built_for[key] != model[key]:
            raise error(f"{what} was built for a model with {key}={built_for[key]}, but this model has "
                        f"{key}={model[key]}; rebuild it for this model with `dvc repro`")


def cache_dir() -> Path:
    """The project's download cache, outside the workspace (the BIG-bench sdist, model parts):
    $AIS_CACHE or ~/.cache/ais."""
    return Path(os.environ.get("AIS_CACHE", Path.home() / ".cache" / "ais"))
