"""Download the four Fashion-MNIST files from the upstream mirrors, safely.

    from fmnist.download import download_all
    directory = download_all(Path("~/.cache/fmnist").expanduser())

Each file goes to a temporary name beside its destination, is verified in full (IDX
header, shape, labels, pinned checksum), and only then renamed into place, so an
interrupted or bad download never leaves a file that looks complete. Failed transfers are
retried (dropped connections, timeouts, and the HTTP statuses of a busy or failing server:
408, 429, 500, 502, 503, 504), then the next mirror is tried. FMNIST_MIRRORS (comma-separated base URLs)
replaces the built-in list, e.g. for an internal mirror.
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from tqdm import tqdm

from fmnist.data import FILES, DataError, find_file, read_verified
from fmnist.runs import atomic_path

MIRRORS = (
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
MIRRORS_VARIABLE = "FMNIST_MIRRORS"
RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})  # a busy or failing server may answer next time
_CHUNK_BYTES = 1 << 16


def mirrors_from_environment() -> tuple[str, ...]:
    configured = os.environ.get(MIRRORS_VARIABLE, "")
    urls = [url.strip() for url in configured.split(",") if url.strip()]
    return tuple(url if url.endswith("/") else url + "/" for url in urls) or MIRRORS


def fetch(url: str, destination: Path, timeout: float) -> None:
    """Stream `url` into `destination`, failing if fewer bytes arrive than announced."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        announced = response.headers.get("Content-Length")
        total = int(announced) if announced and announced.isdigit() else None
        received = 0
        with open(destination, "wb") as file, tqdm(
            total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1],
            disable=None, leave=False,
        ) as progress:  # fmt: skip
            while chunk := response.read(_CHUNK_BYTES):
                file.write(chunk)
                received += len(chunk)
                progress.update(len(chunk))
    if total is not None and received != total:
        raise HTTPException(f"connection closed after {received} of {total} bytes")


def download_file(
    key: str,
    directory: Path,
    mirrors: tuple[str, ...],
    attempts: int = 3,
    retry_delay: float = 1.0,
    timeout: float = 60.0,
) -> Path:
    """Download and verify one of FILES into `directory`; raise DataError if every mirror fails."""
    spec = FILES[key]
    destination = directory / f"{spec.name}.gz"
    failures = []
    for mirror in mirrors:
        url = mirror + destination.name
        for attempt in range(1, attempts + 1):
            try:
                with atomic_path(destination) as temporary:  # renamed into place only once verified
                    fetch(url, temporary, timeout)
                    read_verified(temporary, spec)
                return destination
            except urllib.error.HTTPError as error:
                if error.code not in RETRIED_STATUSES:
                    failures.append(f"{url}: HTTP {error.code} {error.reason}")
                    break  # the server answered; asking again will not change its answer
                failures.append(f"{url} (attempt {attempt}/{attempts}): HTTP {error.code} {error.reason}")
                time.sleep(retry_delay * attempt)
            except DataError as error:
                failures.append(f"{url}: downloaded file is bad: {str(error).split(': ', 1)[-1]}")
                break
            except (urllib.error.URLError, HTTPException, OSError, TimeoutError) as error:
                failures.append(f"{url} (attempt {attempt}/{attempts}): {getattr(error, 'reason', error)}")
                time.sleep(retry_delay * attempt)
    raise DataError(
        f"could not download {destination.name}:\n  " + "\n  ".join(failures)
        + "\nFix: check the network, set FMNIST_MIRRORS to a reachable mirror, or install the "
        "files another way (apt-get install dataset-fashion-mnist) and pass --data-dir"
    )


def download_all(
    directory: Path, mirrors: tuple[str, ...] | None = None, replace_bad: bool = False, **options
) -> Path:
    """Make sure `directory` holds the four files; download those that are missing.

    With `replace_bad`, files already there are verified too and replaced when they fail.
    """
    directory.mkdir(parents=True, exist_ok=True)
    mirrors = mirrors or mirrors_from_environment()
    for key, spec in FILES.items():
        existing = find_file(directory, spec.name)
        if existing is not None and replace_bad:
            try:
                read_verified(existing, spec)
            except DataError:
                existing = None  # the download replaces it (find_file prefers the .gz name)
        if existing is None:
            download_file(key, directory, mirrors, **options)
    return directory
