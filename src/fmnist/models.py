"""Model registry: every architecture takes raw uint8 images (batch, 28, 28) and returns 10 logits.

    from fmnist.models import build_model, MODELS
    model = build_model("baseline")          # the spec's CNN, 121,930 parameters
    logits = model(images_uint8)             # (batch, 10)

Scaling to [0, 1] and the channel axis live inside the model, so a saved `.keras` file
needs no preprocessing code next to it. Register a new architecture with `@register`.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)

MODELS: dict[str, Callable[..., keras.Model]] = {}
DESCRIPTIONS: dict[str, str] = {}


def register(function: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
    MODELS[function.__name__] = function
    DESCRIPTIONS[function.__name__] = (function.__doc__ or "").strip().splitlines()[0]
    return function


def build_model(name: str, num_classes: int = NUM_CLASSES) -> keras.Model:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes)


def image_input() -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """The raw uint8 input and the same images as floats in [0, 1] with a channel axis."""
    images = keras.Input(shape=IMAGE_SHAPE, dtype="uint8", name="images")  # (batch, 28, 28)
    scaled = layers.Rescaling(1.0 / 255, name="scale")(images)
    return images, layers.Reshape((*IMAGE_SHAPE, 1), name="add_channel")(scaled)  # (batch, 28, 28, 1)


@register
def baseline(num_classes: int = NUM_CLASSES) -> keras.Model:
    """The spec's CNN: two 3x3 conv + max-pool blocks, a 64-unit dense layer; 121,930 parameters."""
    images, x = image_input()
    x = layers.Conv2D(32, 3, activation="relu")(x)  # (batch, 26, 26, 32)
    x = layers.MaxPooling2D(2)(x)  # (batch, 13, 13, 32)
    x = layers.Conv2D(64, 3, activation="relu")(x)  # (batch, 11, 11, 64)
    x = layers.MaxPooling2D(2)(x)  # (batch, 5, 5, 64)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(images, logits, name="baseline")


@register
def tiny(num_classes: int = NUM_CLASSES) -> keras.Model:
    """A few-thousand-parameter CNN for tests and smoke runs."""
    images, x = image_input()
    x = layers.Conv2D(8, 3, strides=2, activation="relu")(x)  # (batch, 13, 13, 8)
    x = layers.Conv2D(16, 3, strides=2, activation="relu")(x)  # (batch, 6, 6, 16)
    x = layers.GlobalAveragePooling2D()(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(images, logits, name="tiny")
