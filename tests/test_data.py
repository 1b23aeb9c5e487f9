"""The IDX loader and its checks, on files made here and on copies of the real ones."""

import gzip
import shutil

import numpy as np
import pytest

from conftest import write_idx
from fmnist import data
from fmnist.data import FILES, DataError, parse_idx


def copy_real(real_data_dir, destination):
    destination.mkdir(parents=True, exist_ok=True)
    for spec in FILES.values():
        shutil.copy(real_data_dir / f"{spec.name}.gz", destination)
    return destination


def test_parse_idx_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    raw = gzip.decompress(write_idx(tmp_path / "x.gz", images).read_bytes())
    np.testing.assert_array_equal(parse_idx(raw), images)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x00\x00", "too short"),
        (b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc", "not an IDX file of unsigned bytes"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc", "truncated"),
        (b"\x00\x00\x08\x01" + (2).to_bytes(4, "big") + b"abc", "too long"),
        (b"\x00\x00\x08\x02" + (2).to_bytes(4, "big"), "truncated IDX header"),
    ],
)
def test_parse_idx_rejects_bad_headers(raw, message):
    with pytest.raises(DataError, match=message):
        parse_idx(raw, "thing")


def test_real_files_load_with_expected_shapes(dataset):
    assert dataset.x_train.shape == (60000, 28, 28) and dataset.x_train.dtype == np.uint8
    assert dataset.y_train.shape == (60000,) and dataset.y_test.shape == (10000,)
    assert dataset.x_test.shape == (10000, 28, 28)
    assert len(dataset.class_names) == 10 and dataset.class_names[6] == "Shirt"
    assert (np.bincount(dataset.y_test) == 1000).all()
    assert set(dataset.checksums) == {f"{spec.name}.gz" for spec in FILES.values()}


def test_uncompressed_files_are_accepted(real_data_dir, tmp_path):
    for spec in FILES.values():
        (tmp_path / spec.name).write_bytes(gzip.decompress((real_data_dir / f"{spec.name}.gz").read_bytes()))
    loaded = data.load_from(tmp_path)
    assert loaded.y_train.shape == (60000,)


def test_missing_file_names_it_and_the_fix(real_data_dir, tmp_path):
    copy_real(real_data_dir, tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz .* is missing.*fmnist data --download"):
        data.load_from(tmp_path)


def test_truncated_gzip_is_reported(real_data_dir, tmp_path):
    copy_real(real_data_dir, tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: broken gzip data.*truncated or corrupt"):
        data.load_from(tmp_path)


def test_changed_bytes_fail_the_checksum(real_data_dir, tmp_path):
    copy_real(real_data_dir, tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels = parse_idx(gzip.decompress(path.read_bytes())).copy()
    labels[0] = (labels[0] + 1) % 10  # a valid label, so only the checksum can notice
    write_idx(path, labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: contents differ from Fashion-MNIST's"):
        data.load_from(tmp_path)


def test_label_out_of_range_and_wrong_shape(real_data_dir, tmp_path):
    copy_real(real_data_dir, tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.full(10000, 12, dtype=np.uint8))
    with pytest.raises(DataError, match="label 12 out of range"):
        data.load_from(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(9999, dtype=np.uint8))
    with pytest.raises(DataError, match=r"shape \(9999,\), expected \(10000,\)"):
        data.load_from(tmp_path)


def test_lookup_order(real_data_dir, tmp_path, isolated_cache, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DATA_DIR", real_data_dir)
    assert data.locate() == real_data_dir  # nothing in the cache: the Debian package
    copy_real(real_data_dir, isolated_cache)
    assert data.locate() == isolated_cache  # the cache comes before the package
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path / "mine"))
    assert data.locate() == tmp_path / "mine"  # the environment variable before both
    assert data.locate(tmp_path / "flag") == tmp_path / "flag"  # and an explicit argument before all


def test_nothing_found_without_download(tmp_path, isolated_cache, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DATA_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data.load_dataset(download=False)
