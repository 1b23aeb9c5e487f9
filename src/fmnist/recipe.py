"""The training recipe: optimizer, learning-rate schedule and loss built from a TrainConfig.

    from fmnist.recipe import build_optimizer, build_loss
    optimizer = build_optimizer(config, steps_per_epoch=422)
    loss = build_loss(config)

The optimizer, schedule and loss are backend-agnostic (`keras.ops`) and serialisable, so a checkpoint
restores the schedule's position and the optimizer's state exactly. `jit_compile` also sets up
PyTorch's compiler when that backend is asked to compile.
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path

import keras
from keras import ops

from fmnist.recipe_names import JIT_COMPILE


@keras.saving.register_keras_serializable(package="fmnist")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from `initial_fraction * peak` to `peak`, then decay to 0 at `total_steps`.

    shape="linear" is the one-cycle triangle (airbench, fastai's fit_one_cycle without momentum
    cycling); shape="cosine" is warm-up + cosine annealing.
    """

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, shape: str = "cosine", initial_fraction: float = 0.1):
        self.peak, self.warmup_steps = peak, warmup_steps
        self.shape, self.initial_fraction = shape, initial_fraction
        # A variable, not a constant, so that a time budget's revised length reaches a training step that TensorFlow
        # traced already, without tracing it again (revise_schedule)
        self._total_steps = keras.Variable(total_steps, dtype="float32", trainable=False, name="schedule_total_steps")

    @property
    def total_steps(self) -> int:
        return round(float(ops.convert_to_numpy(self._total_steps)))

    @total_steps.setter
    def total_steps(self, steps: int) -> None:
        self._total_steps.assign(float(steps))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = max(self.warmup_steps, 1)
        rising = self.peak * (self.initial_fraction + (1 - self.initial_fraction) * step / warmup)
        decaying_steps = ops.maximum(self._total_steps - self.warmup_steps, 1.0)
        progress = ops.clip((step - self.warmup_steps) / decaying_steps, 0.0, 1.0)
        if self.shape == "cosine":
            falling = self.peak * 0.5 * (1 + ops.cos(math.pi * progress))
        else:
            falling = self.peak * (1 - progress)
        return ops.where(step < self.warmup_steps, rising, falling)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "shape": self.shape, "initial_fraction": self.initial_fraction}  # fmt: skip


def learning_rate(config, steps_per_epoch: int):
    if config.schedule == "constant":
        return config.learning_rate
    total = config.total_steps(steps_per_epoch)  # to the end of the last epoch, which max_steps may cut short
    warmup = round(total * config.warmup_fraction)
    shape = "linear" if config.schedule == "onecycle" else "cosine"
    return WarmupSchedule(config.learning_rate, total, warmup, shape)


def revise_schedule(optimizer: keras.optimizers.Optimizer, total_steps: int) -> bool:
    """Lengthen or shorten `optimizer`'s WarmupSchedule to end at `total_steps`, keeping its warm-up (a time budget's
    revised plan); True where the model's training step must then be traced again to see it.

    TensorFlow's traced step reads the length from its variable at each step. JAX's compiled step holds it as a
    constant, since Keras passes only the model's and the optimizer's own variables into it; JAX caches its traces
    by the step's method, so `make_train_function(force=True)` traces anew only once nothing holds the old step.
    On PyTorch the step is made again too: an eager one costs nothing to remake, and one that torch.compile
    compiled may hold the length.
    """
    schedule = optimizer._learning_rate  # Keras has a public setter for the schedule, and no getter
    if not isinstance(schedule, WarmupSchedule) or schedule.total_steps == total_steps:
        return False
    schedule.total_steps = total_steps
    return revision_retraces()


def revision_retraces() -> bool:
    """Whether the training step is traced again after revise_schedule (see there): on every backend but TensorFlow."""
    return keras.backend.backend() != "tensorflow"


def build_optimizer(config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = learning_rate(config, steps_per_epoch)
    decay = config.weight_decay or None
    # Keras keeps the weight average in the optimizer, so checkpoints carry it and a resumed run continues it
    average = {"use_ema": config.ema > 0, "ema_momentum": config.ema or 0.99}
    # with an average, the classes below that warm its momentum up (WarmedUpAverage); Keras' own without one
    sgd, adamw, adam = (AveragedSGD, AveragedAdamW, AveragedAdam) if config.ema else (
        keras.optimizers.SGD, keras.optimizers.AdamW, keras.optimizers.Adam)
    if config.optimizer == "sgd":
        return sgd(rate, momentum=config.momentum, nesterov=True, weight_decay=decay, **average)
    if config.optimizer == "muon":
        # None, not 0, where there is no decay: Keras' Muon otherwise rewrites every weight as itself at every step
        return ConvMuon(rate, momentum=config.momentum, weight_decay=decay, adam_weight_decay=decay,
                        exclude_layers=["logits"], dense_kernels=config.muon_dense, **average)
    if config.optimizer == "adamw":
        return adamw(rate, weight_decay=config.weight_decay, **average)
    return adam(rate, weight_decay=decay, **average)


def warmed_up_momentum(momentum: float, step):
    """The average's momentum after `step` steps (0 at the first, whose weights the average, zeros until then, takes
    whole, as Keras' does): `momentum`, or less while (1 + step) / (10 + step) is less, as TensorFlow's
    ExponentialMovingAverage with `num_updates`: 0.18 at the second step, 0.5 at the 9th, 0.9 at the 82nd, 0.99 at
    the 892nd."""
    return ops.where(step > 0, ops.minimum(momentum, (1.0 + step) / (10.0 + step)), 0.0)


class WarmedUpAverage:
    """The weight average (EMA) of a Keras optimizer with its momentum warmed up (`warmed_up_momentum`).

    Keras averages with `ema_momentum` from the second step on, so after t steps the first weights, which are
    random, keep a share of ema_momentum ** t of the average: 28% at 0.999 after 1,266 steps (6 epochs of `best`),
    and 54% at 0.99 after 63. Warmed up, the average follows the weights early on and reaches the full momentum
    once enough steps are behind it. Mixed in before the Keras optimizer, which calls this after each step.
    """

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.use_ema:
            return
        momentum = warmed_up_momentum(self.ema_momentum, ops.cast(self.iterations, "float32"))
        for variable, average in zip(trainable_variables, self._model_variables_moving_average, strict=True):
            if average is not None:
                weight = ops.cast(momentum, average.dtype)
                latest = ops.cast(variable, average.dtype)
                average.assign(ops.add(ops.multiply(weight, average), ops.multiply(1 - weight, latest)))


@keras.saving.register_keras_serializable(package="fmnist")
class AveragedSGD(WarmedUpAverage, keras.optimizers.SGD):
    """Keras' SGD with a warmed-up weight average (`WarmedUpAverage`)."""


@keras.saving.register_keras_serializable(package="fmnist")
class AveragedAdam(WarmedUpAverage, keras.optimizers.Adam):
    """Keras' Adam with a warmed-up weight average (`WarmedUpAverage`)."""


@keras.saving.register_keras_serializable(package="fmnist")
class AveragedAdamW(WarmedUpAverage, keras.optimizers.AdamW):
    """Keras' AdamW with a warmed-up weight average (`WarmedUpAverage`)."""


@keras.saving.register_keras_serializable(package="fmnist")
class ConvMuon(WarmedUpAverage, keras.optimizers.Muon):
    """Keras' Muon with convolution kernels among the matrices it orthogonalises, and a warmed-up weight average.

    Keras' Muon takes the Muon step for 2-D kernels only, and AdamW's for the rest, which in a CNN leaves
    every convolution to AdamW. Here a convolution's (height, width, in, out) kernel takes the Muon step
    as the (height * width * in, out) matrix of its dense form (as in Keller Jordan's airbench), scaled
    as Keras scales a matrix of that shape; layers named in `exclude_layers` (the logits) keep AdamW, and so do
    dense kernels with `dense_kernels=False`.
    """

    def __init__(self, *args, dense_kernels: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.dense_kernels = dense_kernels

    def _should_use_adamw(self, variable):
        if len(variable.shape) == 4:
            return any(re.search(keyword, variable.path) for keyword in self.exclude_layers)
        if len(variable.shape) == 2 and not self.dense_kernels:
            return True
        return super()._should_use_adamw(variable)

    def get_config(self):
        return {**super().get_config(), "dense_kernels": self.dense_kernels}

    # Keras' Muon step calls these two on the kernel's own shape; each works on its matrix form (Keras' scaling reads
    # the first two axes as the matrix's) and hands back the kernel's shape
    def zeropower_via_newtonschulz5(self, x, steps: int):
        return ops.reshape(super().zeropower_via_newtonschulz5(matrix_form(x), steps), x.shape)

    def lr_adjust(self, x):
        return ops.reshape(super().lr_adjust(matrix_form(x)), x.shape)


def matrix_form(kernel):
    """A (height, width, in, out) convolution kernel as the (height * width * in, out) matrix of its dense form; a
    matrix as it is."""
    return ops.reshape(kernel, (-1, kernel.shape[-1]))


@keras.saving.register_keras_serializable(package="fmnist")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Cross-entropy from logits with integer labels and label smoothing.

    Keras' SparseCategoricalCrossentropy has no label smoothing; this is the same loss against
    targets (1 - smoothing) on the true class plus smoothing / classes on every class.
    """

    def __init__(self, smoothing: float = 0.0, name: str = "smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smoothing = smoothing

    def call(self, labels, logits):
        log_probabilities = ops.log_softmax(logits, axis=-1)  # (batch, classes)
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        true_class = ops.take_along_axis(log_probabilities, ops.expand_dims(labels, -1), axis=-1)[:, 0]
        return -((1 - self.smoothing) * true_class + self.smoothing * ops.mean(log_probabilities, axis=-1))

    def get_config(self):
        return {**super().get_config(), "smoothing": self.smoothing}


def build_loss(config) -> keras.losses.Loss:
    if config.cutmix:  # its labels are class probabilities (fmnist.mixing); Keras' own loss smooths those
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing)
    if config.label_smoothing:
        return SmoothedSparseCrossentropy(config.label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accelerator_present() -> bool:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return jax.default_backend() != "cpu"
    if backend == "torch":
        import torch

        return torch.cuda.is_available()
    return False


def cpu_has_bfloat16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bfloat16 arithmetic (AVX512_BF16 or AMX), which oneDNN uses for bfloat16 layers.

    Read from the `flags` line of /proc/cpuinfo (or `cpuinfo`, its text); False where there is none (not Linux).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool({"avx512_bf16", "amx_bf16"} & set(line.partition(":")[2].split()))
    return False


def mixed_policy() -> str:
    # float16 needs loss scaling (Keras' compile adds it) and is fast on GPUs; CPUs have no float16
    # arithmetic worth the name, and bfloat16 has float32's range, so no scaling
    return "mixed_float16" if accelerator_present() else "mixed_bfloat16"


@contextlib.contextmanager
def precision(mixed: bool):
    """Layers created inside the block compute in 16 bits when `mixed` (weights stay float32)."""
    previous = keras.config.dtype_policy()
    if mixed:
        keras.config.set_dtype_policy(mixed_policy())
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def jit_compile(name: str) -> bool | str:
    """Keras' `compile(jit_compile=...)` for `--jit-compile NAME`; on PyTorch, with torch.compile set up for Keras' models."""
    value = JIT_COMPILE[name]
    if value is True and keras.backend.backend() == "torch":
        import torch._dynamo

        # torch.compile traces Keras' layers one call at a time, so the same functions see every layer's
        # shapes; PyTorch 2.13 then marks those shapes dynamic and its inductor fails on them ("cannot
        # determine truth value of Relational"). Static shapes, compiled once per layer's shape, train.
        config = torch._dynamo.config
        config.automatic_dynamic_shapes = False
        # PyTorch 2.4-2.6 name the limits after the cache; 2.7 renamed them and keeps the old names as aliases
        prefix = "recompile" if hasattr(config, "recompile_limit") else "cache_size"
        for name, least in ((f"{prefix}_limit", 64), (f"accumulated_{prefix}_limit", 1024)):
            setattr(config, name, max(getattr(config, name), least))
    return value
