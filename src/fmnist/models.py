"""Model registry: every architecture takes raw uint8 images (batch, 28, 28) and returns 10 logits.

    from fmnist.models import build_model, MODELS
    model = build_model("baseline")          # the spec's CNN, 121,930 parameters
    model = build_model("resnet", augmentation=augmentation_layers(translate=2, flip=True))
    logits = model(images_uint8)             # (batch, 10)

Scaling to [0, 1], the channel axis and the data augmentation live inside the model, so a saved
`.keras` file needs no preprocessing code next to it; the augmentation layers (Keras' flip and
erasing, this module's RandomShift) act only in training and pass images through unchanged at
inference. Register a new architecture with
`@register` and end it with `classifier(...)`, which adds the last layer, named "logits" (the
analysis reads the layer before it) and float32, so that under mixed precision the loss and softmax
still see float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
from keras import layers, ops

from fmnist import tensorflow_gradients, torch_layout
from fmnist.batchnorm import BatchNormalization  # Keras' layer, with PyTorch's fused kernel on that backend

torch_layout.install()  # on the PyTorch backend: no copy of the activations before each convolution or pooling
tensorflow_gradients.install()  # on TensorFlow without a GPU: faster gradients for convolutions and max-pooling

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)

MODELS: dict[str, Callable[..., keras.Model]] = {}
DESCRIPTIONS: dict[str, str] = {}


def register(function: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
    MODELS[function.__name__] = function
    DESCRIPTIONS[function.__name__] = (function.__doc__ or "").strip().splitlines()[0]
    return function


def check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)} (`fmnist models` describes them)")


def build_model(name: str, num_classes: int = NUM_CLASSES, augmentation: Sequence[layers.Layer] = ()) -> keras.Model:
    check_name(name)
    return MODELS[name](num_classes=num_classes, augmentation=augmentation)


def augmentation_layers(translate: int = 0, flip: bool = False, erase: float = 0.0, seed: int = 0) -> list[layers.Layer]:
    """Training-time augmentation on (batch, 28, 28, 1) images in [0, 1]; each one switchable."""
    chosen = []
    if translate:
        chosen.append(RandomShift(translate, seed=seed, name="random_translate"))
    if flip:
        chosen.append(layers.RandomFlip("horizontal", seed=seed + 1, name="random_flip"))
    if erase:
        chosen.append(layers.RandomErasing(erase, scale=(0.02, 0.2), fill_value=0.0, value_range=(0, 1),
                                           seed=seed + 2, name="random_erase"))  # fmt: skip
    return chosen


@keras.saving.register_keras_serializable(package="fmnist")
class RandomShift(layers.Layer):
    """Shift each image by whole pixels, up to `max_shift` each way, filling with black; only in training.

    Two batched products with shifted identity matrices: one vectorised operation on every
    backend, where Keras' RandomTranslation transforms image by image on PyTorch (slow on a CPU,
    a launch per image on a GPU). Shifts are drawn uniformly from -max_shift..max_shift per axis.
    """

    def __init__(self, max_shift: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.max_shift, self.seed = max_shift, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):  # images: (batch, height, width, channels)
        if not training:
            return images
        limit = self.max_shift
        shifts = keras.random.randint((ops.shape(images)[0], 2), -limit, limit + 1, seed=self.seed_generator)
        rows = shift_matrices(shifts[:, 0], images.shape[1], images.dtype)  # (batch, height, height)
        columns = shift_matrices(shifts[:, 1], images.shape[2], images.dtype)  # (batch, width, width)
        shifted = ops.einsum("bij,bjwc->biwc", rows, images)
        return ops.einsum("bkw,bhwc->bhkc", columns, shifted)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "max_shift": self.max_shift, "seed": self.seed}


def shift_matrices(shifts, size: int, dtype):
    """(batch, size, size) matrices M with M[b, i, j] = 1 where j = i - shifts[b]: (M @ x)[i] = x[i - shift]."""
    index = ops.arange(size)
    return ops.cast(ops.equal(index[None, None, :], index[None, :, None] - shifts[:, None, None]), dtype)


def image_input(augmentation: Sequence[layers.Layer] = ()) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The raw uint8 input and the same images as floats in [0, 1] with a channel axis, augmented in training."""
    images = keras.Input(shape=IMAGE_SHAPE, dtype="uint8", name="images")  # (batch, 28, 28)
    scaled = layers.Rescaling(1.0 / 255, name="scale")(images)
    x = layers.Reshape((*IMAGE_SHAPE, 1), name="add_channel")(scaled)  # (batch, 28, 28, 1)
    for layer in augmentation:
        x = layer(x)
    return images, x


def classifier(images: keras.KerasTensor, features: keras.KerasTensor, num_classes: int, name: str) -> keras.Model:
    """The model from `images` to a float32 layer named "logits": the contract every registered model keeps."""
    logits = layers.Dense(num_classes, name="logits", dtype="float32")(features)
    return keras.Model(images, logits, name=name)


def spec_cnn(name: str, dense_units: int, num_classes: int, augmentation: Sequence[layers.Layer]) -> keras.Model:
    """The spec's two conv + max-pool blocks, then a dense layer of `dense_units` and the logits."""
    images, x = image_input(augmentation)
    x = layers.Conv2D(32, 3, activation="relu")(x)  # (batch, 26, 26, 32)
    x = layers.MaxPooling2D(2)(x)  # (batch, 13, 13, 32)
    x = layers.Conv2D(64, 3, activation="relu")(x)  # (batch, 11, 11, 64)
    x = layers.MaxPooling2D(2)(x)  # (batch, 5, 5, 64)
    x = layers.Flatten()(x)
    x = layers.Dense(dense_units, activation="relu")(x)
    return classifier(images, x, num_classes, name)


@register
def baseline(num_classes: int = NUM_CLASSES, augmentation: Sequence[layers.Layer] = ()) -> keras.Model:
    """The spec's CNN: two 3x3 conv + max-pool blocks, a 64-unit dense layer; 121,930 parameters."""
    return spec_cnn("baseline", 64, num_classes, augmentation)


@register
def baseline_wide(num_classes: int = NUM_CLASSES, augmentation: Sequence[layers.Layer] = ()) -> keras.Model:
    """The spec's CNN with a 256-unit dense layer: 12% more arithmetic; 2 epochs reach what 3 of the spec's do (--preset fast)."""
    # The second convolution does most of the arithmetic, so 4x the dense units cost little; the wider
    # layer was chosen among 64-1024 units on validation (BENCHMARKS.md, trials for the fast preset).
    return spec_cnn("baseline_wide", 256, num_classes, augmentation)


@register
def tiny(num_classes: int = NUM_CLASSES, augmentation: Sequence[layers.Layer] = ()) -> keras.Model:
    """A few-thousand-parameter CNN for tests and smoke runs."""
    images, x = image_input(augmentation)
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(x)  # (batch, 13, 13, 8)
    x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)  # (batch, 6, 6, 16)
    x = layers.GlobalAveragePooling2D()(x)
    return classifier(images, x, num_classes, "tiny")


def conv_bn(x, filters: int, kernel_size: int = 3, strides: int = 1, activation: bool = True):
    """Convolution without bias (BatchNorm has one), BatchNorm, then ReLU."""
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False)(x)
    x = BatchNormalization(momentum=0.9)(x)
    return layers.ReLU()(x) if activation else x


def residual_block(x, filters: int):
    """Two conv_bn layers with an identity shortcut, added before the last ReLU; x must have `filters` channels."""
    shortcut = x
    x = conv_bn(conv_bn(x, filters), filters, activation=False)
    return layers.ReLU()(layers.Add()([x, shortcut]))


@register
def bn_cnn(num_classes: int = NUM_CLASSES, augmentation: Sequence[layers.Layer] = ()) -> keras.Model:
    """A VGG-style BatchNorm CNN: 3 stages of two 3x3 convs (32-64-128), max-pools, global pooling."""
    images, x = image_input(augmentation)
    for stage, filters in enumerate((32, 64, 128)):
        x = conv_bn(conv_bn(x, filters), filters)  # (batch, 28 / 2**stage, 28 / 2**stage, filters)
        if stage < 2:
            x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)  # (batch, 128)
    x = layers.Dropout(0.2)(x)
    return classifier(images, x, num_classes, "bn_cnn")


@register
def resnet(num_classes: int = NUM_CLASSES, augmentation: Sequence[layers.Layer] = ()) -> keras.Model:
    """A small ResNet: a stem and 3 stages (32-64-128) of one residual block each, max-pools between."""
    images, x = image_input(augmentation)
    x = conv_bn(x, 32)  # (batch, 28, 28, 32)
    for stage, filters in enumerate((32, 64, 128)):
        if stage:
            x = conv_bn(x, filters)
            x = layers.MaxPooling2D(2)(x)  # (batch, 14 or 7, ..., filters)
        x = residual_block(x, filters)
    x = layers.GlobalAveragePooling2D()(x)  # (batch, 128)
    return classifier(images, x, num_classes, "resnet")


def compact_network(name: str, widths: tuple[int, int, int], num_classes: int,
                    augmentation: Sequence[layers.Layer]) -> keras.Model:
    """`widths` channels at 28x28, at 14x14 and in a residual stage at 7x7, pooling early for CPU speed."""
    images, x = image_input(augmentation)
    x = layers.MaxPooling2D(2)(conv_bn(x, widths[0]))  # (batch, 14, 14, widths[0]): the one layer at full resolution is cheap
    x = layers.MaxPooling2D(2)(conv_bn(x, widths[1]))  # (batch, 7, 7, widths[1])
    x = residual_block(conv_bn(x, widths[2]), widths[2])  # (batch, 7, 7, widths[2])
    x = layers.GlobalAveragePooling2D()(x)  # (batch, widths[2])
    return classifier(images, x, num_classes, name)


@register
def compact(num_classes: int = NUM_CLASSES, augmentation: Sequence[layers.Layer] = ()) -> keras.Model:
    """A BatchNorm CNN that pools early for CPU speed: 32 channels at 28x28, 64 at 14x14, a 128-channel residual stage at 7x7."""
    return compact_network("compact", (32, 64, 128), num_classes, augmentation)


@register
def compact_wide(num_classes: int = NUM_CLASSES, augmentation: Sequence[layers.Layer] = ()) -> keras.Model:
    """`compact` with 96 channels at 14x14 and 192 at 7x7: 2.2x the parameters, 0.69x the speed in bfloat16 on AMX."""
    # the fastest of three widenings timed with Muon in bfloat16 on a Xeon with AMX (0.69x compact's speed):
    # 48-96-192 ran at 0.65x, 64-128-256 at 0.41x (BENCHMARKS.md, "A wider network for the ensemble")
    return compact_network("compact_wide", (32, 96, 192), num_classes, augmentation)


@register
def resnet9(num_classes: int = NUM_CLASSES, augmentation: Sequence[layers.Layer] = ()) -> keras.Model:
    """A ResNet-9 for GPUs (Myrtle.ai's DAWNBench network, 64-128-256-512 channels; 6.6M parameters): --preset gpu."""
    images, x = image_input(augmentation)
    x = conv_bn(x, 64)  # (batch, 28, 28, 64)
    x = residual_block(layers.MaxPooling2D(2)(conv_bn(x, 128)), 128)  # (batch, 14, 14, 128)
    x = layers.MaxPooling2D(2)(conv_bn(x, 256))  # (batch, 7, 7, 256)
    x = residual_block(layers.MaxPooling2D(2, padding="same")(conv_bn(x, 512)), 512)  # (batch, 4, 4, 512)
    x = layers.GlobalMaxPooling2D()(x)  # (batch, 512)
    x = layers.Rescaling(0.125, name="scale_features")(x)  # small initial logits, as in the original, for lr 0.4
    return classifier(images, x, num_classes, "resnet9")
