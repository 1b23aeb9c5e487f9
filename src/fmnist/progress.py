"""Training progress: Keras' progress bar on a terminal, one line per epoch otherwise (logs, CI).

    progress = EpochProgress(epochs=10, steps_per_epoch=1688, interactive=sys.stdout.isatty())
    progress.start(epoch); model.fit(..., verbose=0, callbacks=[progress]); progress.finish(row)

`train` runs one `fit` per epoch (so that the shuffle order depends on the epoch number
alone), which would make Keras' own logger print "Epoch 1/1" every time; this callback
numbers the epochs of the whole run instead.
"""

from __future__ import annotations

import keras

_SHOWN = ("loss", "accuracy", "val_loss", "val_accuracy")


class EpochProgress(keras.callbacks.Callback):
    def __init__(self, epochs: int, steps_per_epoch: int, interactive: bool, log):
        super().__init__()
        self.epochs, self.steps_per_epoch, self.interactive, self.log = epochs, steps_per_epoch, interactive, log
        self.epoch, self.steps, self.bar = 0, steps_per_epoch, None

    def start(self, epoch: int, steps: int | None = None) -> None:
        """Epoch `epoch` (from 0) begins; `steps`: its steps where fewer than steps_per_epoch (the last, cut short)."""
        self.epoch, self.steps = epoch, steps or self.steps_per_epoch
        if self.interactive:
            print(f"Epoch {epoch + 1}/{self.epochs}")
            self.bar = keras.utils.Progbar(self.steps, stateful_metrics=_SHOWN)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is not None:
            shown = [(key, float(value)) for key, value in (logs or {}).items() if key in _SHOWN]
            # min: with steps_per_execution Keras reports the last group one step past the end
            self.bar.update(min(batch + 1, self.steps), shown)

    def finish(self, row: dict) -> None:
        values = [(key, row[key]) for key in _SHOWN if key in row]
        if self.bar is not None:
            self.bar.update(self.steps, values, finalize=True)
        else:
            shown = " - ".join(f"{key}: {value:.4f}" for key, value in values)
            cut = f" ({self.steps} of {self.steps_per_epoch} steps)" if self.steps < self.steps_per_epoch else ""
            self.log(f"epoch {self.epoch + 1}/{self.epochs}{cut} - {row['seconds']:.1f}s - {shown}")
