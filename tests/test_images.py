"""Users' files into 28x28 model inputs: dataset-like images, photos, odd formats, bad files."""

import io

import numpy as np
import pytest
from PIL import Image

from fmnist import images
from fmnist.images import ImageError, from_image_bytes, load_images


def photo(width=300, height=200, item_box=(60, 40, 240, 160), item_value=40, background=250, mode="L"):
    """A 'product photo': a dark rectangle (the item) on a light background."""
    array = np.full((height, width), background, dtype=np.uint8)
    left, top, right, bottom = item_box
    array[top:bottom, left:right] = item_value
    return Image.fromarray(array).convert(mode)


def save(image, path, **options):
    image.save(path, **options)
    return path


def test_dataset_image_saved_as_png_is_unchanged(dataset, tmp_path):
    original = dataset.x_test[0]
    path = save(Image.fromarray(original), tmp_path / "test0.png")
    np.testing.assert_array_equal(load_images(path)[0], original)


# Training images whose item fills the frame, light to the edges: by its border each looks like a photo on white
LIGHT_EDGED_BAGS = [26299, 41623]


def test_a_background_given_overrides_the_border(dataset, tmp_path):
    for index in LIGHT_EDGED_BAGS:
        bag = dataset.x_train[index]
        path = save(Image.fromarray(bag), tmp_path / f"bag{index}.png")
        np.testing.assert_array_equal(load_images(path)[0], 255 - bag)  # auto: negated, as a photo would be
        np.testing.assert_array_equal(load_images(path, background="dark")[0], bag)
    shirt = dataset.x_test[0]
    path = save(Image.fromarray(shirt), tmp_path / "shirt.png")
    np.testing.assert_array_equal(load_images(path, background="light")[0], 255 - shirt)
    np.testing.assert_array_equal(load_images(path, background="auto")[0], shirt)
    on_white = load_images(save(photo(), tmp_path / "photo.png"), background="light")[0]
    np.testing.assert_array_equal(on_white, load_images(tmp_path / "photo.png")[0])
    with pytest.raises(ValueError, match="background 'white': choose auto .*, light or dark"):
        load_images(path, background="white")


def test_photo_is_trimmed_scaled_centred_and_negated(tmp_path):
    result = load_images(save(photo(), tmp_path / "photo.png"))[0]
    assert result.shape == (28, 28) and result.dtype == np.uint8
    rows = np.flatnonzero((result > 100).any(axis=1))
    columns = np.flatnonzero((result > 100).any(axis=0))
    assert columns[0] <= 1 and columns[-1] >= 26  # the longest edge (width 180) fills the 28 pixels
    assert 17 <= rows[-1] - rows[0] + 1 <= 20  # the 120-pixel height scales to about 18.7
    assert abs((rows[0] + rows[-1]) / 2 - 13.5) <= 1  # centred vertically
    assert result[0, 0] == 0 and result[14, 14] > 180  # light item on black, like the dataset


def test_colour_jpeg_and_exif_rotation(tmp_path):
    tall = photo(width=200, height=300, item_box=(60, 40, 140, 260), mode="RGB")
    upright = load_images(save(tall, tmp_path / "tall.jpg", quality=95))[0]
    rotated = tall.rotate(90, expand=True)  # stored on its side, with EXIF saying "rotate back"
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation: rotate 90 degrees clockwise to display
    from_camera = load_images(save(rotated, tmp_path / "rotated.jpg", quality=95, exif=exif))[0]
    assert np.abs(upright.astype(int) - from_camera.astype(int)).mean() < 8
    height = np.ptp(np.flatnonzero((upright > 100).any(axis=1)))
    width = np.ptp(np.flatnonzero((upright > 100).any(axis=0)))
    assert height > width  # the item is upright, as EXIF says


def test_transparency_is_flattened_onto_white(tmp_path):
    rgba = np.zeros((100, 100, 4), dtype=np.uint8)  # fully transparent ...
    rgba[20:80, 30:70] = (10, 10, 10, 255)  # ... around an opaque dark item
    result = load_images(save(Image.fromarray(rgba, "RGBA"), tmp_path / "cutout.png"))[0]
    assert result[0, 0] == 0 and result[14, 14] > 200


def test_sixteen_bit_png_is_scaled_to_eight(tmp_path):
    array = np.asarray(photo(), dtype=np.uint16) * 257  # the same picture at 16 bits
    path = tmp_path / "deep.png"
    Image.fromarray(array.astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    np.testing.assert_array_equal(load_images(path), load_images(save(photo(), tmp_path / "plain.png")))


@pytest.mark.parametrize("array, expected", [
    (np.full((28, 28), 7, dtype=np.uint8), np.full((1, 28, 28), 7)),
    (np.full((3, 28, 28), 0.5, dtype=np.float32), np.full((3, 28, 28), 128)),
    (np.full((28, 28), 200.0), np.full((1, 28, 28), 200)),
])  # fmt: skip
def test_npy_arrays(tmp_path, array, expected):
    np.save(tmp_path / "a.npy", array)
    result = load_images(tmp_path / "a.npy")
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, expected)


def test_idx_arrays(dataset, real_data_dir):
    loaded = load_images(real_data_dir / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(loaded, dataset.x_test)


@pytest.mark.parametrize("content, message", [
    (b"hello, not an image", "not an image format Pillow can read"),
    (b"", r"the file is empty \(0 bytes\)"),
])  # fmt: skip
def test_non_images_are_refused(tmp_path, content, message):
    path = tmp_path / "file.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        load_images(path)
    with pytest.raises(ImageError, match=message):  # as uploaded to the server
        from_image_bytes(content, "file.png")


def test_truncated_image_is_refused(tmp_path):
    buffer = io.BytesIO()
    photo().save(buffer, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_images(path)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)
    with pytest.raises(ImageError, match="over the limit"):
        load_images(save(photo(), tmp_path / "big.png"))  # 60,000 pixels


@pytest.mark.parametrize("size, shade", [(50, 255), (28, 255), (28, 0), (28, 20)])  # 28x28: the dataset's own size
def test_blank_image_is_refused(tmp_path, size, shade):
    with pytest.raises(ImageError, match="blank"):
        load_images(save(Image.new("L", (size, size), shade), tmp_path / "blank.png"))


@pytest.mark.parametrize("array, message", [
    (np.zeros((5, 5)), r"shape \(5, 5\)"),
    (np.full((28, 28), np.nan), "NaN"),
    (np.full((28, 28), 300), "values from 300"),
    (np.array([["a"] * 28] * 28), "dtype"),
    (np.zeros((0, 28, 28), dtype=np.uint8), "holds no images"),
])  # fmt: skip
def test_bad_arrays_are_refused(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ImageError, match=message):
        load_images(tmp_path / "bad.npy")


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_images(tmp_path / "absent.png")


def test_a_directory_stands_for_the_image_and_array_files_in_it(tmp_path):
    for name in ("b.png", "A.JPG", ".hidden.png", "sub/c.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        save(photo(), tmp_path / name, format="PNG")
    np.save(tmp_path / "a.npy", np.zeros((2, 28, 28), dtype=np.uint8))
    idx_header = b"\x00\x00\x08\x03" + (1).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_header + bytes(784))
    (tmp_path / "notes.txt").write_text("not an image")
    assert [path.name for path in images.files_in(tmp_path)] == ["A.JPG", "a.npy", "b.png", "t10k-images-idx3-ubyte"]
    assert images.files_in(tmp_path / "sub") == [tmp_path / "sub" / "c.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="a directory with no image"):
        load_images(tmp_path / "empty")
    with pytest.raises(ImageError, match="a directory; load_images reads one file"):
        load_images(tmp_path / "sub")  # not empty: not called "no image files" there


def test_a_labelled_folder_takes_class_names_in_any_spelling_and_refuses_loose_files(tmp_path, dataset):
    from fmnist.images import load_labelled_folder

    for folder, index in (("tshirt-top", 0), ("ANKLE BOOT", 1), ("3", 2)):
        (tmp_path / folder).mkdir()
        Image.fromarray(dataset.x_test[index]).save(tmp_path / folder / "item.png")
    images, labels, names = load_labelled_folder(tmp_path, dataset.class_names)
    assert labels.tolist() == [3, 9, 0]  # folders in name order: "3", "ANKLE BOOT", "tshirt-top"
    np.testing.assert_array_equal(images, dataset.x_test[[2, 1, 0]])
    assert names == ["3/item.png", "ANKLE BOOT/item.png", "tshirt-top/item.png"]
    np.save(tmp_path / "3" / "more.npy", dataset.x_test[5:7])
    assert load_labelled_folder(tmp_path, dataset.class_names)[2][:3] == ["3/item.png", "3/more.npy[0]", "3/more.npy[1]"]
    (tmp_path / "3" / "scan.png").write_bytes(b"not an image")
    with pytest.raises(ImageError, match=r"1 of its files could not be read; fix or remove them:\n  .*3/scan.png: not an image"):
        load_labelled_folder(tmp_path, dataset.class_names)
    (tmp_path / "3" / "scan.png").unlink()
    (tmp_path / "Hats").mkdir()
    with pytest.raises(ImageError, match=r"subfolders \['Hats'\] name no class; name each after a class \(T-shirt/top, "):
        load_labelled_folder(tmp_path, dataset.class_names)
    (tmp_path / "Hats").rmdir()
    Image.fromarray(dataset.x_test[0]).save(tmp_path / "loose.png")
    with pytest.raises(ImageError, match="loose.png not in a class folder; move each into the subfolder of its class"):
        load_labelled_folder(tmp_path, dataset.class_names)
    (tmp_path / "empty" / "Bag").mkdir(parents=True)
    with pytest.raises(ImageError, match="no image or array files in class subfolders"):
        load_labelled_folder(tmp_path / "empty", dataset.class_names)
