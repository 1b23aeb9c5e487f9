"""Downloads from a real HTTP server on 127.0.0.1, good and broken mirrors alike."""

import gzip

import pytest

from fmnist import data
from fmnist.data import FILES, DataError
from fmnist.download import download_all

NAMES = [f"{spec.name}.gz" for spec in FILES.values()]


def serve(server, prefix, files, behaviour="ok", only=None):
    for name, payload in files.items():
        if only is None or name == only:
            server.routes[f"/{prefix}/{name}"] = (behaviour, payload)
        else:
            server.routes[f"/{prefix}/{name}"] = ("ok", payload)


def assert_nothing_left_but(directory, names):
    assert sorted(path.name for path in directory.iterdir()) == sorted(names)


def test_download_from_a_good_mirror(file_server, real_file_bytes, tmp_path):
    serve(file_server, "good", real_file_bytes)
    directory = download_all(tmp_path / "cache", mirrors=(file_server.url("good"),), retry_delay=0)
    assert_nothing_left_but(directory, NAMES)
    assert data.load_from(directory).x_train.shape == (60000, 28, 28)


def test_load_dataset_downloads_into_the_cache(file_server, real_file_bytes, tmp_path, isolated_cache, monkeypatch):
    serve(file_server, "good", real_file_bytes)
    monkeypatch.setattr(data, "DEBIAN_DATA_DIR", tmp_path / "absent")
    monkeypatch.setenv("FMNIST_MIRRORS", file_server.url("good"))
    loaded = data.load_dataset()
    assert loaded.directory == isolated_cache
    assert_nothing_left_but(isolated_cache, NAMES)
    data.load_dataset()  # the second time it reads the cache and asks for nothing
    assert len(file_server.requests) == 4


@pytest.mark.parametrize("behaviour", ["missing", "drop", "truncated", "wrong"])
def test_a_broken_first_mirror_falls_back_to_the_next(file_server, real_file_bytes, tmp_path, behaviour):
    broken = dict(real_file_bytes)
    if behaviour == "truncated":  # served in full, but the gzip itself is cut short
        broken = {name: payload[: len(payload) // 2] for name, payload in broken.items()}
    elif behaviour == "wrong":  # a valid gzip of other bytes: only the checksum can tell
        broken = {
            name: gzip.compress(gzip.decompress(payload)[:-1] + b"\x00", compresslevel=1) for name, payload in broken.items()
        }
    serve(file_server, "broken", broken, behaviour="ok" if behaviour in ("truncated", "wrong") else behaviour)
    serve(file_server, "good", real_file_bytes)
    directory = download_all(
        tmp_path / "cache", mirrors=(file_server.url("broken"), file_server.url("good")), retry_delay=0
    )
    assert_nothing_left_but(directory, NAMES)
    data.load_from(directory)
    assert any(request.startswith("/broken/") for request in file_server.requests)


def test_dropped_connections_are_retried_then_reported(file_server, real_file_bytes, tmp_path):
    serve(file_server, "flaky", real_file_bytes, behaviour="drop", only="t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError) as raised:
        download_all(tmp_path / "cache", mirrors=(file_server.url("flaky"),), retry_delay=0, attempts=3)
    message = str(raised.value)
    assert "could not download t10k-labels-idx1-ubyte.gz" in message
    assert "attempt 3/3" in message and "FMNIST_MIRRORS" in message
    assert file_server.requests.count("/flaky/t10k-labels-idx1-ubyte.gz") == 3
    # the three good files stay; nothing partial is left for the broken one
    assert_nothing_left_but(tmp_path / "cache", [name for name in NAMES if not name.startswith("t10k-labels")])


def test_a_busy_server_is_asked_again(file_server, real_file_bytes, tmp_path):
    serve(file_server, "busy", real_file_bytes, behaviour="busy", only="train-labels-idx1-ubyte.gz")
    directory = download_all(tmp_path / "cache", mirrors=(file_server.url("busy"),), retry_delay=0)
    assert_nothing_left_but(directory, NAMES)
    assert file_server.requests.count("/busy/train-labels-idx1-ubyte.gz") == 2  # a 503, then the file


def test_every_mirror_failing_leaves_no_file(file_server, tmp_path):
    with pytest.raises(DataError, match=r"HTTP 404.*\n.*HTTP 404"):
        download_all(tmp_path / "cache", mirrors=(file_server.url("a"), file_server.url("b")), retry_delay=0)
    assert_nothing_left_but(tmp_path / "cache", [])


def test_replace_bad_redownloads_a_corrupt_file(file_server, real_file_bytes, tmp_path):
    serve(file_server, "good", real_file_bytes)
    cache = tmp_path / "cache"
    download_all(cache, mirrors=(file_server.url("good"),), retry_delay=0)
    (cache / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError):
        data.load_from(cache)
    download_all(cache, mirrors=(file_server.url("good"),), replace_bad=True, retry_delay=0)
    data.load_from(cache)
    assert file_server.requests.count("/good/train-labels-idx1-ubyte.gz") == 2
