"""Turn users' image files into 28x28 uint8 arrays like Fashion-MNIST's own.

    from fmnist.images import load_images
    arrays = load_images("shirt.jpg")     # (1, 28, 28) uint8, light item on black
    arrays = load_images("batch.npy")     # (n, 28, 28) from a NumPy or IDX array file
    images, labels, names = load_labelled_folder("photos", class_names)   # photos/Shirt/*.jpg, photos/Sneaker/...

Photos follow the Fashion-MNIST paper's conversion of Zalando's product photos (dark item on a
light background): trim the background border, scale the longest edge to 28, sharpen, centre
on a 28x28 canvas, negate so the item is light on black, 8-bit grayscale. Images that already
have a dark background (e.g. dataset images saved as PNG) are not negated, and a 28x28 one is
taken as it is. The background is told from the image's border (`background="auto"`); where the
border misleads (an item that fills the frame, a dataset image with light edges), `"light"` or
`"dark"` says which it is. Transparency is flattened onto white, 16-bit and float images are scaled to
8 bits, and EXIF orientation is applied.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

SIZE = 28
MAX_PIXELS = 40_000_000  # larger images are refused as possible decompression bombs
_BACKGROUND_TOLERANCE = 30  # grey levels from the border's median that still count as background
BACKGROUNDS = ("auto", "light", "dark")  # an image file's background: told from its border, or given


class ImageError(ValueError):
    """An input file is not an image (or array) that can be classified; the message says why."""


def open_image(source: bytes | str | Path, name: str) -> Image.Image:
    """Decode an image fully (so truncation shows now), refusing decompression bombs."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    if source == b"" or (not isinstance(source, bytes) and Path(source).is_file() and Path(source).stat().st_size == 0):
        raise ImageError(f"{name}: the file is empty (0 bytes); was it saved or uploaded in full?")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"{name}: {width}x{height} pixels is over the limit of {MAX_PIXELS:,}; downscale it first")
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{name}: refused as a possible decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image format Pillow can read (PNG, JPEG, GIF, BMP, TIFF, WebP...)") from None
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except (OSError, SyntaxError, ValueError) as error:  # Pillow's words for truncated or corrupt data
        raise ImageError(f"{name}: the image data is truncated or corrupt ({error})") from None
    return image


def to_grayscale(image: Image.Image) -> np.ndarray:
    """8-bit grayscale array of any Pillow image: EXIF orientation, alpha onto white, 16-bit and float scaled."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if values.max(initial=0) <= 1.0 else (255.0 if values.max() <= 255 else 65535.0)
        return np.clip(np.rint(values / top * 255), 0, 255).astype(np.uint8)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def check_background(background: str) -> str:
    if background not in BACKGROUNDS:
        raise ValueError(f"background {background!r}: choose auto (told from the border), light or dark")
    return background


def fashion_mnist_style(gray: np.ndarray, name: str = "image", background: str = "auto") -> np.ndarray:
    """Trim, scale the longest edge to 28, centre, and make the item light on black."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    light = np.median(border) > 127 if check_background(background) == "auto" else background == "light"
    if light:  # a product photo or a drawing on white: negate like the dataset
        gray = 255 - gray
        border = 255 - border
    background_shade = int(np.median(border))
    foreground = np.abs(gray.astype(np.int16) - background_shade) > _BACKGROUND_TOLERANCE
    if not foreground.any():  # every one of the dataset's 70,000 images has an item by this measure
        raise ImageError(f"{name}: the image is blank (no item stands out from the background)")
    if gray.shape == (SIZE, SIZE):
        return gray  # already the dataset's geometry (e.g. a test image saved as PNG)
    rows, columns = np.flatnonzero(foreground.any(axis=1)), np.flatnonzero(foreground.any(axis=0))
    item = Image.fromarray(gray[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1])
    scale = SIZE / max(item.size)
    new_size = (max(1, round(item.width * scale)), max(1, round(item.height * scale)))
    item = item.resize(new_size, Image.Resampling.LANCZOS).filter(ImageFilter.UnsharpMask(radius=1, percent=50, threshold=2))
    canvas = Image.new("L", (SIZE, SIZE), 0)
    canvas.paste(item, ((SIZE - item.width) // 2, (SIZE - item.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def from_image_bytes(source: bytes | str | Path, name: str, background: str = "auto") -> np.ndarray:
    """(28, 28) uint8 model input from an encoded image (file path or bytes)."""
    check_background(background)  # before the decoding, which can take a while
    return fashion_mnist_style(to_grayscale(open_image(source, name)), name, background)


def array_to_images(array: np.ndarray, name: str) -> np.ndarray:
    """Validate a (28, 28) or (n, 28, 28) array and return it as uint8 (n, 28, 28)."""
    if array.shape[-2:] != (SIZE, SIZE) or array.ndim not in (2, 3):
        raise ImageError(f"{name}: array of shape {array.shape}; expected (28, 28) or (n, 28, 28)")
    array = array.reshape(-1, SIZE, SIZE)
    if not len(array):
        raise ImageError(f"{name}: the array holds no images (shape {array.shape})")
    if array.dtype == np.uint8:
        return array
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ImageError(f"{name}: array of dtype {array.dtype}; expected numbers")
    if not np.isfinite(array).all():
        raise ImageError(f"{name}: the array holds NaN or infinite values")
    if array.min(initial=0) < 0 or array.max(initial=0) > 255:
        raise ImageError(f"{name}: values from {array.min()} to {array.max()}; expected 0-255 (or 0-1 floats)")
    if np.issubdtype(array.dtype, np.floating) and array.max(initial=0) <= 1.0:
        array = array * 255  # floats in [0, 1], the spec's scaled form
    return np.rint(array).astype(np.uint8)


def image_suffixes() -> set[str]:
    """File name endings of the formats Pillow reads."""
    Image.init()  # registers every plugin's extensions, not only the common ones Pillow preloads
    return {suffix for suffix, plugin in Image.registered_extensions().items() if plugin in Image.OPEN}


def files_in(directory: str | Path) -> list[Path]:
    """The image and array files directly in a directory (not in its subdirectories), by name; hidden ones left out."""
    suffixes = image_suffixes()
    return sorted(path for path in Path(directory).iterdir() if path.is_file() and not path.name.startswith(".")
                  and (path.suffix.lower() in suffixes or is_array_file(path)))  # fmt: skip


def is_array_file(path: Path) -> bool:
    return path.suffix.lower() == ".npy" or is_idx(path)


def read_array(path: str | Path) -> np.ndarray:
    """The array in a .npy or IDX file (.gz or not), as stored; ImageError if it cannot be read."""
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise ImageError(f"{name}: no such file")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise ImageError(f"{name}: not a readable .npy array ({error})") from None
    from fmnist.data import DataError, parse_idx, read_bytes

    try:
        return parse_idx(read_bytes(path), name)
    except DataError as error:
        raise ImageError(str(error)) from None


def load_images(path: str | Path, background: str = "auto") -> np.ndarray:
    """(n, 28, 28) uint8 from an image file, a .npy file, or an IDX file (.gz or not).

    `background` is an image file's (BACKGROUNDS); arrays are taken as they are.
    """
    path, background = Path(path), check_background(background)
    if path.is_dir():  # `fmnist predict` expands directories first, so it brings only empty ones here
        if not files_in(path):
            raise ImageError(f"{path}: a directory with no image (.png, .jpg, ...) or array (.npy, IDX) files in it")
        raise ImageError(f"{path}: a directory; load_images reads one file (Predictor.predict_files reads a directory's)")
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    if is_array_file(path):
        return array_to_images(read_array(path), str(path))
    return from_image_bytes(path, str(path), background)[np.newaxis]


def is_idx(path: Path) -> bool:
    """IDX files are told by name (as distributed) or by their magic number for unsigned bytes."""
    if "idx" in path.name:
        return True
    with open(path, "rb") as file:
        head = file.read(4)
    return len(head) == 4 and head[:3] == b"\x00\x00\x08" and 1 <= head[3] <= 3


def folder_key(name: str) -> str:
    """Class names as folder names may have lost their punctuation: "T-shirt/top" is T-shirt_top or tshirt-top."""
    return "".join(character for character in name.lower() if character.isalnum())


def load_labelled_folder(directory: str | Path, class_names: list[str],
                         background: str = "auto") -> tuple[np.ndarray, np.ndarray, list[str]]:  # fmt: skip
    """(n, 28, 28) uint8 images, (n,) labels and each image's name, from one subfolder per class.

    The layout of Keras' `image_dataset_from_directory` and torchvision's `ImageFolder`: a subfolder is
    named after its class (any case and punctuation: `T-shirt_top`, `tshirt-top`) or its index (`0`..`9`),
    and holds image or array files. Every file must load, so that the figures are on every image given.
    An image's name is its file's path in `directory` (`Shirt/photo.jpg`), with its index for an
    array file that holds several (`Shirt/scans.npy[3]`). `background` is as for `load_images`.
    """
    directory, background = Path(directory), check_background(background)
    keys = {folder_key(name): index for index, name in enumerate(class_names)}
    keys.update({str(index): index for index in range(len(class_names))})
    folders = sorted(path for path in directory.iterdir() if path.is_dir() and not path.name.startswith("."))
    unknown = [folder.name for folder in folders if folder_key(folder.name) not in keys]
    if unknown:
        raise ImageError(f"{directory}: subfolders {unknown} name no class; name each after a class ("
                         + ", ".join(class_names) + f"; case and punctuation are free) or its index 0-{len(class_names) - 1}")
    loose = files_in(directory)
    if loose:
        example = directory / class_names[0].replace("/", "_")
        raise ImageError(f"{directory}: {loose[0].name}" + (f" and {len(loose) - 1} more files" if len(loose) > 1 else "")
                         + " not in a class folder; "
                         f"move each into the subfolder of its class, e.g. {example}")  # fmt: skip
    images, labels, names, failures = [], [], [], []
    for folder in folders:
        for path in files_in(folder):
            try:
                loaded = load_images(path, background)
            except ImageError as error:
                failures.append(str(error))
                continue
            images.append(loaded)
            labels.append(np.full(len(loaded), keys[folder_key(folder.name)], dtype=np.int64))
            name = path.relative_to(directory).as_posix()
            names.extend([f"{name}[{index}]" for index in range(len(loaded))] if len(loaded) > 1 else [name])
    if failures:
        listed = "\n  ".join(failures[:10]) + (f"\n  ... and {len(failures) - 10} more" if len(failures) > 10 else "")
        raise ImageError(f"{directory}: {len(failures)} of its files could not be read; fix or remove them:\n  {listed}")
    if not images:
        raise ImageError(f"{directory}: no image or array files in class subfolders (e.g. {directory}/Shirt/photo.jpg)")
    return np.concatenate(images), np.concatenate(labels), names
