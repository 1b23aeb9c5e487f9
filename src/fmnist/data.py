"""Find, verify and load the Fashion-MNIST IDX files.

    from fmnist.data import load_dataset
    data = load_dataset()            # looks in the usual places, downloads if needed
    data.x_train.shape               # (60000, 28, 28) uint8
    data.class_names[data.y_train[0]]

Where the files are looked for, in order: an explicit directory (argument or the
FMNIST_DATA_DIR environment variable), the user cache (~/.cache/fmnist), Debian's
`dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist), and finally the
upstream mirrors, downloaded into the cache (see `download.py`).

Every file is checked when read: the IDX magic number, its dimensions and counts, the
label range, and a pinned SHA-256 of the decompressed bytes (gzip headers differ between
distributors, the contents must not).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

DEBIAN_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_VARIABLE = "FMNIST_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class IdxFile:
    """One of the four standard files and what its contents must be."""

    name: str  # file name without the .gz suffix
    shape: tuple[int, ...]  # array shape after the header
    sha256: str  # of the decompressed bytes, header included


FILES = {
    "x_train": IdxFile(
        "train-images-idx3-ubyte", (60000, 28, 28),
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    "y_train": IdxFile(
        "train-labels-idx1-ubyte", (60000,),
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    "x_test": IdxFile(
        "t10k-images-idx3-ubyte", (10000, 28, 28),
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    "y_test": IdxFile(
        "t10k-labels-idx1-ubyte", (10000,),
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
}  # fmt: skip

_UBYTE_TYPE_CODE = 0x08


class DataError(Exception):
    """A data file is missing, unreadable or not what it should be. The message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray  # (60000, 28, 28) uint8
    y_train: np.ndarray  # (60000,) uint8
    x_test: np.ndarray  # (10000, 28, 28) uint8
    y_test: np.ndarray  # (10000,) uint8
    class_names: tuple[str, ...]
    directory: Path  # where the files were read from
    checksums: dict[str, str]  # file name -> SHA-256 of its decompressed bytes


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fmnist"


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an IDX array of unsigned bytes (the only type Fashion-MNIST uses)."""
    if len(raw) < 4:
        raise DataError(f"{source}: only {len(raw)} bytes, too short for an IDX header")
    zero, type_code, num_dims = raw[0] << 8 | raw[1], raw[2], raw[3]
    if zero != 0 or type_code != _UBYTE_TYPE_CODE or not 1 <= num_dims <= 4:
        raise DataError(
            f"{source}: not an IDX file of unsigned bytes "
            f"(magic number 0x{raw[:4].hex()}, expected 0x000008 followed by the number of dimensions)"
        )
    header_size = 4 + 4 * num_dims
    if len(raw) < header_size:
        raise DataError(f"{source}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(num_dims))
    expected_size = header_size + int(np.prod(shape))
    if len(raw) != expected_size:
        raise DataError(
            f"{source}: the header announces shape {shape} ({expected_size} bytes) "
            f"but the file holds {len(raw)} bytes; it is {'truncated' if len(raw) < expected_size else 'too long'}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def read_bytes(path: Path) -> bytes:
    """The file's contents, decompressed when it is gzipped (told by its magic bytes, not its name)."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror})") from error
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise DataError(f"{path}: broken gzip data ({error}); the file is truncated or corrupt") from error


def find_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def read_verified(path: Path, spec: IdxFile) -> tuple[np.ndarray, str]:
    """Read one standard file and check it fully; return the array and its checksum."""
    raw = read_bytes(path)
    array = parse_idx(raw, str(path))
    if array.shape != spec.shape:
        raise DataError(f"{path}: shape {array.shape}, expected {spec.shape}")
    if array.ndim == 1 and array.max(initial=0) >= len(CLASS_NAMES):
        raise DataError(f"{path}: label {array.max()} out of range 0-{len(CLASS_NAMES) - 1}")
    checksum = hashlib.sha256(raw).hexdigest()
    if checksum != spec.sha256:
        raise DataError(
            f"{path}: contents differ from Fashion-MNIST's (SHA-256 {checksum[:12]}..., "
            f"expected {spec.sha256[:12]}...); the file is corrupt or another dataset"
        )
    return array, checksum


def load_from(directory: Path) -> Dataset:
    """Load and verify the four files in `directory`; a DataError names the first bad one."""
    arrays, checksums = {}, {}
    for key, spec in FILES.items():
        path = find_file(directory, spec.name)
        if path is None:
            raise DataError(
                f"{directory}: {spec.name}.gz (or {spec.name}) is missing; "
                f"run `fmnist data --download --data-dir {directory}` to fetch the four files"
            )
        try:
            arrays[key], checksums[path.name] = read_verified(path, spec)
        except DataError as error:
            raise DataError(
                f"{error}. Fix: delete it and run `fmnist data --download --data-dir {directory}`"
                + (", or reinstall Debian's package: apt-get install --reinstall dataset-fashion-mnist"
                   if directory == DEBIAN_DATA_DIR else "")
            ) from None
    return Dataset(
        class_names=CLASS_NAMES, directory=directory, checksums=checksums, **arrays
    )


def has_all_files(directory: Path) -> bool:
    return all(find_file(directory, spec.name) for spec in FILES.values())


def locate(data_dir: str | Path | None = None) -> Path | None:
    """The first directory that holds all four files, or None when they must be downloaded.

    An explicit directory (argument, then FMNIST_DATA_DIR) is returned even when it lacks
    files, so that the error names the directory the user asked for.
    """
    explicit = data_dir or os.environ.get(DATA_DIR_VARIABLE)
    if explicit:
        return Path(explicit)
    for directory in (cache_dir(), DEBIAN_DATA_DIR):
        if has_all_files(directory):
            return directory
    return None


def load_dataset(data_dir: str | Path | None = None, download: bool = True) -> Dataset:
    """Load Fashion-MNIST from the first place that has it, downloading into the cache if none does."""
    directory = locate(data_dir)
    if directory is None:
        if not download:
            raise DataError(
                "Fashion-MNIST not found in the cache or in /usr/share/datasets/fashion-mnist; "
                "install it (apt-get install dataset-fashion-mnist), pass --data-dir, "
                "or run `fmnist data --download`"
            )
        from fmnist.download import download_all

        directory = download_all(cache_dir())
    return load_from(directory)


def class_counts(labels: np.ndarray, num_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    return np.bincount(labels, minlength=num_classes)
