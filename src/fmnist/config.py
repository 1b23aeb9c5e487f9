"""The one typed configuration of a training run, saved as config.json in its run directory.

    from fmnist.config import TrainConfig
    config = TrainConfig(epochs=3, seed=1)
    TrainConfig.from_dict(config.to_dict()) == config   # True; unknown keys raise ValueError

Every field is a `fmnist train` flag (`--batch-size`, `--no-deterministic`, ...): the CLI
builds its options from the fields below, so a knob cannot exist in one place only.
The defaults are the spec's: Adam at 1e-3, batch 32, 10 epochs, 10% held out for validation.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

from fmnist.recipe_names import JIT_COMPILE, OPTIMIZERS, SCHEDULES


def _field(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str = _field("baseline", "architecture from the model registry (`fmnist models` lists them)")
    epochs: int = _field(10, "passes over the training split")
    time_budget: float = _field(0.0, "seconds of training to fill on this machine: sets the epochs, and --max-steps, "
                                     "to the steps that fit 90 percent of it (whole epochs, then part of one more), "
                                     "timed before training by a probe (some 15-45 s), which counts against it, "
                                     "and revised after each epoch at the pace the epochs run "
                                     "(0: off; --epochs or --max-steps given without it turns a preset's or config's "
                                     "budget off)")
    max_steps: int | None = _field(None, "end training after this many steps in all, cutting the last epoch short "
                                         "(none: every epoch whole); the time budget sets it to the steps that fit")
    batch_size: int = _field(32, "images per optimisation step")
    drop_remainder: bool = _field(False, "drop each epoch's last batch where it is smaller than --batch-size (other "
                                         "images each epoch, as the order is drawn anew): every step then has one "
                                         "shape, which JAX and XLA compile once instead of twice")
    learning_rate: float = _field(1e-3, "step size (the peak of the schedule when there is one)")
    optimizer: str = _field("adam", "adam, adamw (decoupled weight decay), sgd (Nesterov momentum) or muon "
                                    "(Nesterov momentum orthogonalised for each convolution and hidden dense kernel, "
                                    "AdamW for the other weights at the same rate)")
    momentum: float = _field(0.9, "SGD's and Muon's momentum")
    muon_dense: bool = _field(True, "Muon orthogonalises the hidden dense kernels' steps too (--no-muon-dense: AdamW "
                                    "steps them, as it steps the logits; for a large dense kernel and small batches, "
                                    "where orthogonalising it costs as much as the rest of the step)")
    weight_decay: float = _field(0.0, "decoupled weight decay per step, relative to the learning rate")
    schedule: str = _field("constant", "learning-rate schedule: constant, onecycle (linear up, linear down) or "
                                       "cosine (linear warm-up, cosine decay)")
    warmup_fraction: float = _field(0.0, "share of all steps spent warming up (onecycle and cosine)")
    label_smoothing: float = _field(0.0, "share of the target spread evenly over all classes")
    translate: int = _field(0, "augmentation: random shifts of up to this many pixels (0: off)")
    flip: bool = _field(False, "augmentation: random horizontal flips")
    erase: float = _field(0.0, "augmentation: probability of erasing a random rectangle (cutout)")
    cutmix: float = _field(0.0, "augmentation: probability that a training image gets a random rectangle of another "
                                "and a label mixed by their areas (CutMix; 0: off)")
    ema: float = _field(0.0, "momentum of an exponential moving average of the weights, which is validated, kept "
                             "and saved instead of the last weights, warmed up as min(ema, (1 + t) / (10 + t)) after "
                             "t steps (0: off; 0.99-0.999 typical)")
    tta: bool = _field(False, "test-time augmentation: average the predictions for each image and its mirror image")
    tta_shift: int = _field(0, "with --tta, also average the views of both shifted by up to this many pixels each way, "
                               "as --translate shifts in training: 2(2n+1)^2 views, 18 for 1 (0: off)")
    early_stopping_patience: int = _field(0, "stop after this many epochs without a better validation accuracy, "
                                             "keeping the best epoch's weights (0: off)")
    validation_fraction: float = _field(0.1, "share of the training set held out for validation, stratified (0: "
                                             "none, to train the final model on every image once the options are "
                                             "chosen on a split)")
    split_seed: int = _field(0, "seed of the train/validation split; kept apart from --seed so that runs "
                                "with different seeds are judged on the same validation images")
    seed: int = _field(0, "seed of weight initialisation and of the order of the images in each epoch")
    deterministic: bool = _field(True, "bit-for-bit repeatable runs (TensorFlow op determinism)")
    mixed_precision: bool = _field(False, "compute in 16-bit floats with float32 weights (float16 on a GPU, "
                                          "bfloat16 on a CPU); fast on GPUs and on CPUs with AVX512_BF16 or AMX")
    train_subset: int | None = _field(None, "train on only this many training images (stratified); for quick trials")
    # Speed only: none of these changes what a step computes.
    steps_per_execution: int = _field(1, "training steps per call into the backend, which saves Python's overhead per "
                                         "step (TensorFlow and JAX; the PyTorch backend runs one at a time)")
    jit_compile: str = _field("auto", "compilation of the training step (XLA; torch.compile on PyTorch): auto "
                                      "(Keras' choice: on for JAX, and for TensorFlow with a GPU; off for PyTorch, "
                                      "where it ran 2x slower here, and for TensorFlow on a CPU, where it ran 3x "
                                      "slower), on or off")
    checkpoint_seconds: float = _field(10.0, "seconds of training between resumable checkpoints: one is written after "
                                             "the first epoch ending this long after the last one, and after the "
                                             "last epoch (0: after every epoch; each costs about 0.3 s for resnet9)")

    def __post_init__(self):
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs must be at least 1, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be at least 1 (or left out), got {self.max_steps}")
        if not self.time_budget >= 0:
            problems.append(f"time_budget must be 0 (off) or a number of seconds, got {self.time_budget}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.validation_fraction < 1:
            problems.append(f"validation_fraction must be 0 (none) or between 0 and 1, got {self.validation_fraction}")
        if self.early_stopping_patience and not self.validation_fraction:
            problems.append("early stopping watches the validation accuracy, and validation_fraction 0 holds out no "
                            "images; hold some out (--validation-fraction 0.1) or drop --early-stopping-patience")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        problems += [f"{name} must be {allowed}, got {getattr(self, name)}"
                     for name, (allowed, within) in RANGES.items() if not within(getattr(self, name))]  # fmt: skip
        problems += tta_shift_problems(self.tta_shift, self.tta)
        if self.steps_per_execution < 1:
            problems.append(f"steps_per_execution must be at least 1, got {self.steps_per_execution}")
        if not self.checkpoint_seconds >= 0:
            problems.append(f"checkpoint_seconds must be 0 or more, got {self.checkpoint_seconds}")
        if self.jit_compile not in JIT_COMPILE:
            problems.append(f"jit_compile must be one of {list(JIT_COMPILE)}, got {self.jit_compile!r}")
        if self.train_subset is not None and self.train_subset < 100:
            problems.append(f"train_subset must be at least 100 images, got {self.train_subset}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def total_steps(self, steps_per_epoch: int) -> int:
        """The training steps of the whole run: `epochs` of `steps_per_epoch`, or `max_steps` if fewer."""
        whole = self.epochs * steps_per_epoch
        return whole if self.max_steps is None else min(whole, self.max_steps)

    def with_total_steps(self, steps: int, steps_per_epoch: int) -> TrainConfig:
        """This config for `steps` in all: the epochs they span, and max_steps only where it cuts the last one short."""
        whole = steps % steps_per_epoch == 0
        return dataclasses.replace(self, epochs=-(-steps // steps_per_epoch), max_steps=None if whole else steps)

    def epoch_steps(self, steps_per_epoch: int) -> list[int]:
        """The steps of each epoch the run trains: whole ones, then one cut short where `max_steps` ends it."""
        total = self.total_steps(steps_per_epoch)
        return [min(steps_per_epoch, total - start) for start in range(0, total, steps_per_epoch)]

    def tta_options(self) -> dict:
        """The test-time augmentation this run is evaluated with, as keywords of `evaluate.evaluate_model`."""
        return {"tta": self.tta, "tta_shift": self.tta_shift}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        if not isinstance(values, dict):
            raise ValueError(f"a config is a JSON object of settings, not a {type(values).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        for name, value in values.items():
            expected = field_types()[name]
            if not _matches(value, expected):
                raise ValueError(f"config key {name!r}: {value!r} is not of type {expected}")
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


# `fast` and (in bfloat16) `fast_bf16` until 2026-12-04, and their base: the spec's accuracy in a fraction of its time
# with a wider dense layer, bigger batches and Adam on a one-cycle schedule; 16 steps per call into TensorFlow: the same
# steps, 7-17% more images/s in the throughput benchmark (BENCHMARKS.md)
FAST_ADAM = {
    "model": "baseline_wide", "batch_size": 64, "learning_rate": 5e-3, "schedule": "onecycle", "warmup_fraction": 0.2,
    "label_smoothing": 0.1, "epochs": 2, "deterministic": False, "steps_per_execution": 16,
}  # fmt: skip

# Named sets of options, chosen on the validation split (BENCHMARKS.md). `fmnist train --preset NAME`
# starts from one; flags given next to it override its values.
PRESETS: dict[str, dict] = {
    "spec": {},  # the spec's settings, the same as no preset
    "fast": {  # FAST_ADAM with Muon for the two convolutions and AdamW for the dense kernels at batch 128: 0.72 points
        # more validation accuracy than Adam in the same 2 epochs and time on 2 AVX2 cores (3 seeds each); Muon for the
        # 1,600 x 256 dense kernel as well validated up to 0.6 points higher again (one seed), but took 1.3-1.9 times
        # as long at batch 128-64 (BENCHMARKS.md)
        **FAST_ADAM, "optimizer": "muon", "muon_dense": False, "batch_size": 128, "learning_rate": 0.01,
    },
    "best": {  # compact with the augmentation, label smoothing and schedule chosen on a Zen 4 (best_bf16, below) in
        # float32, trained by Muon, for as many epochs as fit 15 minutes of training on the machine that runs it:
        # 9.7-10.7 on 2 AVX2 cores on TensorFlow, where Muon (peak 0.02, weight decay 0.05, the best of 0.01-0.05 over
        # 4 epochs) validated 0.5 points above SGD (Nesterov, peak 0.2, weight decay 5e-4; 3 seeds each;
        # BENCHMARKS.md); 10 epochs with --time-budget 0; 16 steps per call: 3-7% more images/s on TensorFlow. With
        # SGD its shifts still paid at those 8-11 epochs: without them (and their views at test time) 2 seeds
        # validated 0.16-0.25 points lower. `compact` pooling before BatchNorm (12% more images/s there) validated no
        # higher than `compact` in its fast hour
        "model": "compact", "time_budget": 900.0, "epochs": 10, "batch_size": 256, "optimizer": "muon",
        "learning_rate": 0.02, "momentum": 0.9, "weight_decay": 0.05, "schedule": "onecycle", "warmup_fraction": 0.25,
        "label_smoothing": 0.1, "translate": 1, "flip": True, "erase": 0.5, "tta": True, "tta_shift": 1,
        "deterministic": False, "steps_per_execution": 16,
    },
    "gpu": {  # for one GPU: Myrtle.ai's ResNet-9 recipe (batch 512, SGD at 0.4, one-cycle) with shifts, flips,
        # cutout; 148 epochs are what a probe found to fit 140 s on an H100 (2 min measured); 200 and 220
        # epochs (the whole 3 minutes) validated no better, 60 tested the same and validated 0.1 points lower
        # (three of those make the ensemble for target 4 in BENCHMARKS.md). TTA over the shifts of a pixel as well
        # as flips (18 views) validated 0.2 points above flips alone on such an ensemble, shifts of 2 pixels (50) 0.07.
        # Muon at best's settings validated 1.0 points above this SGD over 6 epochs on a CPU (one seed each); untried on
        # a GPU, where 60 epochs take SGD's runs to 0.997 training accuracy anyway (BENCHMARKS.md, "Muon for ResNet-9").
        # Full batches alone (since 2026-12-05; 240 or 96 images an epoch left out): JAX compiles the training step
        # again for an epoch's last, smaller batch; on an H200 that had compiled the rest, a new size of it took the
        # first epoch from 10-11 s to 29-30 s (BENCHMARKS.md, "Full batches alone")
        "model": "resnet9", "epochs": 148, "batch_size": 512, "drop_remainder": True, "optimizer": "sgd", "learning_rate": 0.4,
        "momentum": 0.9, "weight_decay": 5e-4, "schedule": "onecycle", "warmup_fraction": 0.25,
        "label_smoothing": 0.1, "translate": 2, "flip": True, "erase": 0.5, "tta": True, "tta_shift": 1,
        "mixed_precision": True, "deterministic": False,
    },
}  # fmt: skip

# For CPUs with bfloat16 arithmetic (AVX512_BF16 or AMX), where `--mixed-precision` trains faster than float32:
# the CPU presets in bfloat16, with the time it frees spent on more epochs (BENCHMARKS.md, "A second machine").
# `fast` in bfloat16 trains baseline_wide 30% faster there: three epochs still take under a fifth of the spec's time.
# With Adam (FAST_ADAM) they validated 0.8 points above its two (2 seeds) on an AMD EPYC Zen 4, where `fast` with Adam
# tested below 0.905; with Muon, as `fast` trains since, 0.38 points above Adam's three on an Intel Xeon with AMX
# (3 seeds each; BENCHMARKS.md, "A fourth machine").
PRESETS["fast_bf16"] = {**PRESETS["fast"], "mixed_precision": True, "epochs": 3}
# `best` in bfloat16, sized to 15 minutes as `best` is: on a Xeon with AMX that is 31-37 epochs (21-23 in float32),
# which validated the same as `best` (0.9508 +- 0.0023 against 0.9518 +- 0.0018, 3 seeds each) and 0.30 points above
# the former `best_bf16` (0.9478 +- 0.0007; the 3 runs as ensembles: 0.9520 against 0.9497; BENCHMARKS.md, "Muon in
# bfloat16"). That former recipe, now `--preset best_bf16 --optimizer sgd --learning-rate 0.2 --weight-decay 5e-4
# --epochs 26 --batch-size 256`, was chosen on an AMD EPYC Zen 4 for 26 epochs (15 minutes there before BatchNorm ran
# fused kernels): shifts of 1 pixel and erasing paid at that length; it validated higher than 20 epochs at batch 128
# with erasing at 0.25, and no lower than 28 epochs, erasing at 0.25 or label smoothing 0.2 (shifts of 2 pixels and 10x
# the weight decay: lower). TTA over the 9 shifts it trains on, mirrored or not, validated 0.14 points above flip TTA
# alone (3 seeds); `best` took all of it over. With SGD, its time budget's 34-36 epochs there validated no higher than
# 26; with Muon, as now, it tested 0.54 points above that SGD recipe there (2026-12-05). `--model compact_wide` (21-25
# epochs in the 15 minutes on the Xeon) validated 0.14 points higher on 3 seeds there, within the spread, so the preset
# keeps `compact`; three such runs on all images, at batch 256, made the ensemble that met issue 3's stretch (0.9511 in
# 43.5 minutes; BENCHMARKS.md, "A wider network for the ensemble").
# Batch 512 since 2026-12-06, at the same peak rate: half the steps, each a little faster per image (6-10% more
# images/s in the throughput benchmark on the Xeon and the Zen 4, 2% in the 15-minute runs on the Zen 4). Over 10
# epochs on the Xeon it validated as 256 did (0.9479 against 0.9482); with the 15 minutes on the Zen 4, 0.10 points
# higher (0.9531 +- 0.0012 against 0.9521 +- 0.0015, higher on 2 seeds of 3, the rule set before the runs; 32.7-32.9
# epochs against 32.4-32.5; BENCHMARKS.md, "Batch 512 for `best_bf16` over its 15 minutes").
PRESETS["best_bf16"] = {**PRESETS["best"], "mixed_precision": True, "batch_size": 512}

# What each preset is for, as `fmnist train --help` lists them (README's presets table has what each reached).
PRESET_PURPOSES = {
    "spec": "the spec as written, the same as no preset",
    "fast": "the spec's accuracy in a fraction of its time: 2 epochs",
    "fast_bf16": "fast in bfloat16, for CPUs with AVX512_BF16 or AMX: 3 epochs",
    "best": "the best single model in 15 minutes on a CPU",
    "best_bf16": "best in bfloat16 at batch 512, for CPUs with AVX512_BF16 or AMX",
    "gpu": "ResNet-9 for one GPU, on the JAX backend: about 2 minutes on an H100",
}


def whole_epoch_steps(num_train_images: int, batch_size: int, drop_remainder: bool = False) -> int:
    """The steps of one whole epoch: every training image once, the last batch smaller where they do not divide, or
    with `drop_remainder` the full batches alone."""
    return num_train_images // batch_size if drop_remainder else -(-num_train_images // batch_size)


# The fields whose values have bounds: what each allows, as the error says it, and the test (False for NaN too).
RANGES: dict[str, tuple[str, typing.Callable[[float], bool]]] = {
    "momentum": ("in [0, 1)", lambda value: 0 <= value < 1),
    "weight_decay": ("0 or more", lambda value: value >= 0),
    "warmup_fraction": ("in [0, 1)", lambda value: 0 <= value < 1),
    "label_smoothing": ("in [0, 1)", lambda value: 0 <= value < 1),
    "translate": ("0-14 pixels", lambda value: 0 <= value <= 14),
    "erase": ("a probability in [0, 1]", lambda value: 0 <= value <= 1),
    "cutmix": ("a probability in [0, 1]", lambda value: 0 <= value <= 1),
    "ema": ("in [0, 1) (0: off)", lambda value: 0 <= value < 1),
    "early_stopping_patience": ("0 (off) or more epochs", lambda value: value >= 0),
}


def tta_shift_problems(tta_shift: int, tta: bool) -> list[str]:
    if not 0 <= tta_shift <= 14:
        return [f"tta_shift must be 0-14 pixels, got {tta_shift}"]
    if tta_shift and not tta:
        return [f"tta_shift {tta_shift} adds shifted views to flip TTA's; turn on tta (--tta) as well, or set it to 0"]
    return []


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return TrainConfig(**PRESETS[name])


def field_types() -> dict[str, object]:
    return typing.get_type_hints(TrainConfig)


def _matches(value, expected) -> bool:
    if isinstance(expected, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)
