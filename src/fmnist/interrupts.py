"""Stop training cleanly on Ctrl-C or `kill` (SIGINT / SIGTERM).

    with GracefulStop() as stop:
        for epoch in ...:
            model.fit(..., callbacks=[stop])
            if stop.requested:
                raise TrainingInterrupted(...)
            ... write the epoch down, and a checkpoint if stop.requested ...
            if stop.requested:
                raise TrainingInterrupted(...)

Raising KeyboardInterrupt wherever the signal lands can leave TensorFlow's input pipeline
deadlocked while it is torn down (seen with tf.data's thread pool), so the first signal only
asks Keras to stop after the current batch; the unfinished epoch is then dropped and the last
checkpoint stays as it was. A signal between two fits lets the finished epoch be checkpointed
first. A second signal raises KeyboardInterrupt at once.
"""

from __future__ import annotations

import signal
import threading

import keras

from fmnist.runs import TrainingInterrupted  # noqa: F401  (raised by callers; re-exported)

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class GracefulStop(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.requested = False
        self._previous = {}

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            self._previous = {number: signal.signal(number, self._handle) for number in _SIGNALS}
        return self

    def __exit__(self, *exception) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, signal_number, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def on_train_batch_end(self, batch, logs=None):
        if self.requested:
            self.model.stop_training = True
