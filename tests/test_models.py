"""Every registered model: builds, takes raw uint8 images, gives finite logits, saves and loads."""

import numpy as np
import pytest

from conftest import as_numpy
from fmnist.models import MODELS, build_model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(4, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_contract(name, images, tmp_path):
    import keras

    model = build_model(name)
    assert model.inputs[0].dtype == "uint8" and tuple(model.inputs[0].shape) == (None, 28, 28)
    logits = as_numpy(model(images, training=False))
    assert logits.shape == (4, 10) and np.isfinite(logits).all()
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(as_numpy(reloaded(images, training=False)), logits, rtol=1e-6, atol=1e-6)


def test_baseline_is_the_spec():
    model = build_model("baseline")
    assert model.count_params() == 121_930
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["InputLayer", "Rescaling", "Reshape", "Conv2D", "MaxPooling2D", "Conv2D",
                     "MaxPooling2D", "Flatten", "Dense", "Dense"]  # fmt: skip
    convolutions = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    assert [(layer.filters, layer.kernel_size) for layer in convolutions] == [(32, (3, 3)), (64, (3, 3))]
    assert model.layers[-1].activation.__name__ == "linear"  # logits; softmax comes at prediction


def layout(model):
    return [(type(layer).__name__, layer.get_config().get("filters"), layer.get_config().get("units"))
            for layer in model.layers]  # fmt: skip


def test_baseline_wide_differs_from_the_spec_only_in_its_dense_layer():
    spec, wide = layout(build_model("baseline")), layout(build_model("baseline_wide"))
    changed = [(old, new) for old, new in zip(spec, wide, strict=True) if old != new]
    assert changed == [(("Dense", None, 64), ("Dense", None, 256))]


def test_compact_wide_differs_from_compact_only_in_its_widths():
    compact, wide = build_model("compact"), build_model("compact_wide")
    changed = [(old[1], new[1]) for old, new in zip(layout(compact), layout(wide), strict=True) if old != new]
    assert changed == [(64, 96), (128, 192), (128, 192), (128, 192)]  # the convolutions at 14x14 and 7x7
    assert compact.count_params() == 390_570 and wide.count_params() == 862_122


def test_scaling_inside_the_model_matches_the_spec():
    """The model's own scaling gives what the spec's `images / 255.0` gives."""
    model = build_model("baseline")
    image = np.arange(784, dtype=np.uint32).reshape(1, 28, 28) % 256
    scaled = model.get_layer("add_channel")  # the channel axis comes after scaling
    import keras

    probe = keras.Model(model.input, scaled.output)
    np.testing.assert_allclose(as_numpy(probe(image.astype(np.uint8)))[..., 0], image / 255.0, rtol=1e-6)


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'nope'; choose one of \['baseline'"):
        build_model("nope")
