"""Training throughput of a registered model: images per second over whole epochs of real data.

    python benchmarks/throughput_benchmark.py                                  # baseline, batch 128
    python benchmarks/throughput_benchmark.py --model compact --batch-size 128 --augment --images 12800
    python benchmarks/throughput_benchmark.py --jit-compile                    # XLA (slower on this CPU)
    KERAS_BACKEND=torch python benchmarks/throughput_benchmark.py --jit-compile  # torch.compile (slower too)
    KERAS_BACKEND=torch python benchmarks/throughput_benchmark.py --model bn_cnn
    KERAS_BACKEND=torch python benchmarks/throughput_benchmark.py --model compact --keras-torch-layout  # Keras' transpose
    python benchmarks/throughput_benchmark.py --model compact --keras-batchnorm     # Keras' BatchNorm, not the fused one
    python benchmarks/throughput_benchmark.py --model compact --keras-gradients     # TensorFlow's own gradient kernels
    python benchmarks/throughput_benchmark.py --keras-inputs                   # Keras' autotuned pipeline for arrays
    KERAS_BACKEND=torch python benchmarks/throughput_benchmark.py --glibc-malloc  # malloc's adaptive thresholds
    python benchmarks/throughput_benchmark.py --model compact --mixed-precision  # bfloat16 (a CPU with AVX512_BF16 or AMX)
    python benchmarks/throughput_benchmark.py --model compact --optimizer muon   # the cost of Muon's step (`best`'s)

One `fit` per epoch over the first `--images` training images (Adam, the spec's loss, no
validation), fed as `fmnist train` feeds them (`fmnist.inputs`), timed around each call; the first
epoch includes tracing, so the row reports the later ones, with the page faults each epoch took (a
fresh page of zeros from the kernel each; see fmnist.allocator). Nothing else should run on the
machine meanwhile.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="baseline")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=54_000, help="training images per epoch (default: 54,000)")
    parser.add_argument("--augment", action="store_true", help="shifts of 2 pixels, flips and random erasing in the model")
    parser.add_argument("--jit-compile", action="store_true",
                        help="XLA, or torch.compile on PyTorch (Keras' default on a CPU is off)")
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--mixed-precision", action="store_true",
                        help="layers compute in bfloat16 (float16 on a GPU), weights stay float32")  # fmt: skip
    parser.add_argument("--keras-torch-layout", action="store_true",
                        help="PyTorch backend: Keras' own transpose before each convolution and pooling "
                        "(copies), not fmnist.torch_layout's backport of Keras' fix")  # fmt: skip
    parser.add_argument("--keras-gradients", action="store_true",
                        help="TensorFlow: Keras' own convolution and max-pooling, whose gradients are TensorFlow's "
                        "kernels, not fmnist.tensorflow_gradients' faster ones")  # fmt: skip
    parser.add_argument("--keras-batchnorm", action="store_true",
                        help="Keras' own BatchNormalization layer, composed from operations, not fmnist.batchnorm's, "
                        "which trains with the backend's fused kernel on PyTorch and TensorFlow")  # fmt: skip
    parser.add_argument("--keras-inputs", action="store_true",
                        help="TensorFlow: the arrays as they are, through Keras' own tf.data pipeline (autotuned), "
                        "not fmnist.inputs' pipeline without autotuning")  # fmt: skip
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="glibc's malloc with its adaptive thresholds, as Python starts it, not with those "
                        "fmnist.allocator fixes (as the fmnist command does)")  # fmt: skip
    parser.add_argument("--threads", metavar="INTRA,INTER", help="TensorFlow's intra- and inter-op thread counts")
    parser.add_argument("--optimizer", choices=("adam", "adamw", "muon"), default="adam",
                        help="Adam at 1e-3 (default), or AdamW or Muon as `fmnist train --optimizer` builds them, at "
                        "`--preset best`'s rate and weight decay (0.02, 0.05)")  # fmt: skip
    arguments = parser.parse_args()

    from fmnist import allocator

    if not arguments.glibc_malloc:
        allocator.keep_freed_memory()  # first, before the libraries' own allocations
    import keras

    if arguments.threads and keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        intra, inter = map(int, arguments.threads.split(","))
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)

    from fmnist import inputs, models, tensorflow_gradients, torch_layout
    from fmnist.config import TrainConfig, whole_epoch_steps
    from fmnist.data import load_dataset
    from fmnist.models import augmentation_layers, build_model
    from fmnist.recipe import build_optimizer, jit_compile, precision

    if arguments.keras_torch_layout:
        torch_layout.uninstall()
    if arguments.keras_gradients:
        tensorflow_gradients.uninstall()
    if arguments.keras_batchnorm:
        models.BatchNormalization = keras.layers.BatchNormalization  # what the registry's conv_bn builds

    data = load_dataset()
    images, labels = data.x_train[: arguments.images], data.y_train[: arguments.images]
    keras.utils.set_random_seed(0)
    augmentation = augmentation_layers(2, True, 0.25) if arguments.augment else []
    with precision(arguments.mixed_precision):
        model = build_model(arguments.model, augmentation=augmentation)
    if arguments.optimizer == "adam":
        optimizer = keras.optimizers.Adam(1e-3)
    else:  # the optimizer `fmnist train` builds, at a constant rate: the cost of its step, not a schedule's
        config = TrainConfig(optimizer=arguments.optimizer, learning_rate=0.02, weight_decay=0.05)
        optimizer = build_optimizer(config, steps_per_epoch=whole_epoch_steps(len(images), arguments.batch_size))
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=jit_compile("on" if arguments.jit_compile else "auto"),
                  steps_per_execution=arguments.steps_per_execution)  # fmt: skip

    seconds: list[float] = []
    page_faults: list[int] = []  # minor ones: each a fresh page of zeros from the kernel
    keras_inputs = {"x": images, "y": labels, "batch_size": arguments.batch_size, "shuffle": False}
    fit = keras_inputs if arguments.keras_inputs else inputs.fit_arguments((images, labels), arguments.batch_size)
    for _ in range(arguments.epochs):  # one fit per epoch, as fmnist train does (each starts a new iterator)
        started, faults = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model.fit(**fit, epochs=1, verbose=0)
        seconds.append(time.perf_counter() - started)
        page_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
    later = seconds[1:] or seconds
    rates = [len(images) / each for each in later]
    layout = " (Keras' own transpose)" if arguments.keras_torch_layout else ""
    layout += " (Keras' gradients)" if arguments.keras_gradients else ""
    layout += " (Keras' BatchNorm)" if arguments.keras_batchnorm else ""
    layout += " (Keras' inputs)" if arguments.keras_inputs else ""
    layout += " (glibc's malloc)" if arguments.glibc_malloc else ""
    layout += f" ({model.dtype_policy.name})" if arguments.mixed_precision else ""
    layout += f" ({arguments.optimizer})" if arguments.optimizer != "adam" else ""
    print(f"{keras.backend.backend()}{layout} {arguments.model} batch {arguments.batch_size}: epochs "
          + ", ".join(f"{each:.1f} s" for each in seconds)
          + f"; images/s after the first: {', '.join(f'{rate:,.0f}' for rate in rates)} (best {max(rates):,.0f})"
          + f"; page faults per epoch after the first: {', '.join(f'{count:,}' for count in page_faults[1:] or page_faults)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
