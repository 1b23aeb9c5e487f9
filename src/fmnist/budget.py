"""How many training steps fit a time budget on this machine, from a few seconds of timed training steps.

    probe = measure(model, (x_train, y_train), validation, batch_size=256, steps_per_execution=1, steps_per_epoch=211)
    steps = steps_within(900, probe, steps_per_epoch=211)     # ValueError if not even one step fits
    epochs, max_steps = -(-steps // 211), steps               # the last epoch cut short where a whole one won't fit
    steps = revised_steps(900, probe, 211, [(211, 80.2), (211, 84.9)], planned=steps)  # after two epochs

`fmnist train --time-budget 900` uses this: a preset's epochs were sized for the machine its trials ran
on (`best_bf16` trained 26 epochs, 13 minutes on an AMD EPYC Zen 4, before it took a budget), and on another CPU
the same epochs take longer or leave time unused. A one-cycle or cosine schedule needs its length before the first step, so
the steps are chosen up front, on a throwaway copy of the model with the run's own settings (network,
batch size, precision, augmentation, input pipeline): whole epochs, then part of one more where a whole
one would not fit, and the run trains for that many (`epochs`, and `max_steps` to cut the last one short).

The probe times the training step, and the validation pass that ends each epoch, on chunks that grow until one
takes `TIMED_SECONDS`, then runs that chunk again and keeps the faster of the two (one stall of a few seconds,
on an AVX2 EPYC, had it plan 4 epochs where 10 fitted); its first chunk carries the tracing or compiling that
the run's first epoch pays again. A chunk's time per step includes the start-up of its `fit` call, which a
whole epoch spreads over more steps, so the estimate leans long: a `best_bf16` probe on a Zen 4 gave 32.7 s an
epoch for epochs that took 30.5 s on the PyTorch backend. (The line through two chunk sizes, which would part
the two, erred short instead, 26.9 s: the probe's steps ran faster than an epoch's, for reasons not found.)
Everything the probe takes counts against the budget, and only `SHARE` of the budget is planned for: the same
epochs took up to 10% longer within an hour on the machines measured. A machine that slows down by more during
the run overruns the budget: on TensorFlow, on the same Zen 4, the probe gave 39.4 s an epoch for epochs that
then took 45.2 s on the mean, 7% over 900 s. Planning whole epochs only, at 95%, left half an epoch unused on the
mean, which absorbed such drift; a plan that fills its share with part of one more epoch has only the share
left for it, and at 95% `best` overran 900 s by 41 s on an AVX2 EPYC whose epochs ran 11% slower than the
probe had timed (BENCHMARKS.md). At 90% it would have ended inside, and it plans about as much on the mean as
whole epochs at 95% did.

So the plan is revised at the end of each epoch (`revised_steps`): the epochs to come are predicted at the pace
of the last ones, and where the rest would overrun the time left, or leave a quarter of an epoch of it unused,
the run is planned anew for 90% of what is left, and the schedule stretched or shortened to end with it. Replayed
with each epoch's recorded speed, on the six runs of `best` on all 60,000 images on an AVX2 EPYC (789-981 s with
the probe as they ran, BENCHMARKS.md), the revisions (0-4 a run) end all six within 826-895 s.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

from fmnist import inputs
from fmnist.evaluate import PREDICT_BATCH_SIZE

if TYPE_CHECKING:
    from fmnist.config import TrainConfig

SHARE = 0.90  # of the budget, planned for; the rest absorbs the machine's drift in speed
TIMED_SECONDS = 3.0  # the last chunk of steps (and of validation batches) takes at least this long, data permitting
FIRST_STEPS = 8  # the first chunk, which traces or compiles the step on TensorFlow and JAX
RECENT_EPOCHS = 3  # whose pace predicts the epochs to come, in a revision of the plan
TOLERANCE = 0.05  # of the time left: a plan on course to end within SHARE +- this of it stands


@dataclasses.dataclass(frozen=True)
class Probe:
    step_seconds: float  # one training step
    validation_seconds: float  # the validation pass at the end of an epoch
    first_call_seconds: float  # tracing or compiling, which the run's first epoch pays again
    seconds: float  # the whole probe

    def epoch_seconds(self, steps_per_epoch: int) -> float:
        return steps_per_epoch * self.step_seconds + self.validation_seconds


def steps_within(budget: float, probe: Probe, steps_per_epoch: int) -> int:
    """The training steps that fit `SHARE` of `budget` seconds after the probe and the first call's compiling.

    Whole epochs, each with its validation pass, then as many steps of one more as fit with that epoch's
    validation: planning whole epochs only left up to an epoch of the budget unused (16-100 s of 900 here).
    """
    overhead = probe.seconds + probe.first_call_seconds
    steps = steps_in(SHARE * budget - overhead, probe.step_seconds, probe.validation_seconds, steps_per_epoch)
    if steps < 1:
        epoch = probe.epoch_seconds(steps_per_epoch)
        least = probe.step_seconds + probe.validation_seconds + overhead
        raise ValueError(f"a time budget of {budget:g} s fits no training step here: one takes about "
                         f"{1000 * probe.step_seconds:.0f} ms and the validation after it {probe.validation_seconds:.1f} s "
                         f"(a whole epoch about {epoch:.1f} s), after {overhead:.1f} s for the probe that timed them and "
                         f"the first step's compiling; give at least {math.ceil(least / SHARE)} s, or set --epochs "
                         "without --time-budget")  # fmt: skip
    return steps


def revised_steps(budget: float, probe: Probe, steps_per_epoch: int, epochs: list[tuple[int, float]], planned: int,
                  traced: Collection[int] = (0,), retraces: bool = True) -> int:  # fmt: skip
    """The training steps in all that fit `budget` now that `epochs` ((steps, seconds) each) have trained: `planned`
    while the rest is on course to end near `SHARE` of the time left, else a new plan for `SHARE` of it.

    The epochs to come are predicted at the pace of the last `RECENT_EPOCHS` against the probe's timing, leaving
    out those in `traced`, which traced or compiled the step first (the run's first, the first after a resume or
    after a revision on JAX or PyTorch), while there are others. So a machine that slows down during the run is seen
    within an epoch or two, and the plan shrinks once the rest would take more than `SHARE + TOLERANCE` of the time
    left. It grows, from the second epoch on and until two epochs from the end, where more than a quarter of an epoch
    (and `TOLERANCE` of the time left) of `SHARE` would go unused. Where a new plan `retraces` the training step (on
    JAX, whose compiled step holds the schedule's length as a constant, and on PyTorch: recipe.revise_schedule), the
    plan counts that in at the time of the probe's first call.
    """
    done = sum(steps for steps, _ in epochs)
    left = seconds_left(budget, probe, epochs)
    if done >= planned:
        return planned
    pace = pace_of(probe, epochs, traced)

    def seconds_for(steps: int) -> float:
        return pace * (steps * probe.step_seconds + -(-steps // steps_per_epoch) * probe.validation_seconds)

    predicted = seconds_for(planned - done)
    retrace_seconds = probe.first_call_seconds if retraces else 0.0
    if predicted <= (SHARE + TOLERANCE) * left:  # not overrunning: the margin for drift is not half spent
        worth_a_revision = max(TOLERANCE * left, seconds_for(steps_per_epoch) / 4, 2 * retrace_seconds)
        # Not within two epochs of the end: 10% of that is less than one epoch's own drift, and a plan grown with 37 s
        # left ended 0.1 s over the budget on PyTorch (BENCHMARKS.md)
        if len(epochs) < 2 or left < seconds_for(2 * steps_per_epoch) or SHARE * left - predicted < worth_a_revision:
            return planned
    available = (SHARE * left - retrace_seconds) / pace  # in the probe's seconds
    return done + steps_in(available, probe.step_seconds, probe.validation_seconds, steps_per_epoch, trained=done)


def seconds_left(budget: float, probe: Probe, epochs: list[tuple[int, float]]) -> float:
    """What is left of `budget` after the probe and `epochs` ((steps, seconds) each)."""
    return budget - probe.seconds - sum(seconds for _, seconds in epochs)


def pace_of(probe: Probe, epochs: list[tuple[int, float]], traced: Collection[int] = (0,)) -> float:
    """The time the last `RECENT_EPOCHS` epochs took, against the probe's timing: 1.1 where they ran 10% slower."""
    # The compiling in a traced epoch is only estimated (and is most of a short epoch): the others go first
    plain = [epoch for index, epoch in enumerate(epochs) if index not in traced]
    recent = (plain or epochs)[-RECENT_EPOCHS:]
    expected = sum(steps * probe.step_seconds + probe.validation_seconds for steps, _ in recent)
    expected += 0 if plain else probe.first_call_seconds * len(recent)
    return sum(seconds for _, seconds in recent) / expected


def steps_in(seconds: float, step_seconds: float, validation_seconds: float, steps_per_epoch: int,
             trained: int = 0) -> int:  # fmt: skip
    """Whole epochs, each with its validation pass, then as many steps of one more as fit `seconds` with its validation.

    Those steps only where they train for at least as long as the validation takes, or where the run has no other
    (no whole epoch fits, and none has `trained`): a plan of 32 epochs and 4 steps would have spent 0.5 s training and
    0.9 s validating its last epoch here.
    """
    epoch = steps_per_epoch * step_seconds + validation_seconds
    epochs = math.floor(seconds / epoch) if seconds > 0 else 0
    left = seconds - epochs * epoch - validation_seconds  # for the steps of an epoch cut short
    extra = min(math.floor(left / step_seconds), steps_per_epoch - 1) if left > 0 else 0
    if (epochs or trained) and extra * step_seconds < validation_seconds:
        extra = 0
    return epochs * steps_per_epoch + extra


def describe_steps(steps: int, steps_per_epoch: int) -> str:
    """'8 epochs' or '8 epochs and 143 of the 211 steps of one more, 1831 steps', for the log."""
    epochs, extra = divmod(steps, steps_per_epoch)
    whole = f"{epochs} epoch{'s' * (epochs != 1)}"
    return f"{whole} and {extra} of the {steps_per_epoch} steps of one more, {steps} steps" if extra else whole


def measure(model, train: inputs.Arrays, validation: inputs.Arrays | None, batch_size: int,
            steps_per_execution: int, steps_per_epoch: int) -> Probe:  # fmt: skip
    """Time `model`'s training steps on `train` (up to the `steps_per_epoch` an epoch has, full batches alone with
    drop_remainder) and its evaluation on `validation` (if any), in the batches `fit` validates in; the model is
    trained on."""
    started = time.perf_counter()

    def fit(steps: int) -> None:
        images = slice(0, steps * batch_size)
        model.fit(**inputs.fit_arguments((train[0][images], train[1][images]), batch_size), epochs=1, verbose=0)

    validation_batch_size = inputs.even_batch_size(0 if validation is None else len(validation[1]), PREDICT_BATCH_SIZE)

    def validate(batches: int) -> None:
        images = slice(0, batches * validation_batch_size)
        model.evaluate(**inputs.evaluate_arguments((validation[0][images], validation[1][images]), validation_batch_size),
                       verbose=0)  # fmt: skip

    # whole calls into the backend, as the run makes them
    step, first_fit = seconds_per_unit(fit, steps_per_epoch, FIRST_STEPS, steps_per_execution)
    validation_batches = 0 if validation is None else -(-len(validation[1]) // validation_batch_size)
    batch, first_validation = seconds_per_unit(validate, validation_batches) if validation_batches else (0.0, 0.0)
    return Probe(step_seconds=step, validation_seconds=batch * validation_batches,
                 first_call_seconds=first_fit + first_validation, seconds=time.perf_counter() - started)  # fmt: skip


def seconds_per_unit(run, available: int, first: int = 1, multiple: int = 1) -> tuple[float, float]:
    """(seconds per unit, the first call's extra seconds) of `run(units)`.

    After a first chunk of `first` units, chunks grow until one takes `TIMED_SECONDS` or all `available`
    units; that chunk, run twice, sets the time per unit (the faster run), and the first's excess over it is
    the first call's extra time: tracing or compiling. The second chunk is as long as the first's time per unit
    says `TIMED_SECONDS` needs, and no shorter than the first; the later ones at least double, so a chunk whose
    call has a start-up of its own that the estimate misses is not followed by ever smaller steps up.
    """

    def chunk(units: int) -> int:
        return min(-(-units // multiple) * multiple, available)

    units = first_units = chunk(first)
    first_seconds = timed(run, units)
    per_unit = first_seconds / units
    # Not doubled after the first: 16 steps of `compact_wide` at batch 512 take 7.1 s on a Zen 4, and a second chunk
    # of 32, run twice, made its probe 44 s where 16 make it 31 (BENCHMARKS.md, "The probe's second chunk")
    growth = 1
    while True:
        units = chunk(max(units * growth, math.ceil(TIMED_SECONDS / per_unit)))
        seconds = timed(run, units)
        per_unit = seconds / units
        if seconds >= TIMED_SECONDS or units == available:
            break
        growth = 2
    # The same chunk again, and the faster of the two: a stall of a few seconds in the one chunk that sets the
    # estimate (another process, the host of a virtual machine) planned 4 epochs where 10 fitted (BENCHMARKS.md)
    per_unit = min(per_unit, timed(run, units) / units)
    return per_unit, max(first_seconds - first_units * per_unit, 0.0)


def timed(run, units: int) -> float:
    started = time.perf_counter()
    run(units)
    return time.perf_counter() - started


def revised_plan(config: TrainConfig, probe: Probe, history: list[dict], traced: list[int],
                 steps_per_epoch: int, log, retraces: bool = True) -> TrainConfig | None:  # fmt: skip
    """`config` with the steps that now fit its time budget, at the pace of the epochs in `history`; None where its
    plan still fits (revised_steps)."""
    planned = config.total_steps(steps_per_epoch)
    epochs = [(row["steps"], row["seconds"]) for row in history]
    steps = revised_steps(config.time_budget, probe, steps_per_epoch, epochs, planned, traced, retraces)
    if steps == planned:
        return None
    left, pace = seconds_left(config.time_budget, probe, epochs), pace_of(probe, epochs, traced)
    log(f"time budget {config.time_budget:g} s: {left:.0f} s left after epoch {len(history)}, whose last epochs took "
        f"{pace:.2f} times what the probe timed, so {describe_steps(steps, steps_per_epoch)} in all instead of "
        f"{describe_steps(planned, steps_per_epoch)}")  # fmt: skip
    return config.with_total_steps(steps, steps_per_epoch)


def budgeted_epochs_of(saved: TrainConfig, config: TrainConfig) -> TrainConfig:
    """`config` with the epochs (and steps) a run whose config.json holds `saved` chose for the same time budget: kept
    on resuming."""
    if config.time_budget and saved.time_budget == config.time_budget:
        return dataclasses.replace(config, epochs=saved.epochs, max_steps=saved.max_steps)
    return config
