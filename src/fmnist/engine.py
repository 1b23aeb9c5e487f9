"""Inference engines and the micro-batcher that the server puts in front of them.

    engine = load_engine("runs/baseline")                # ONNX Runtime if exported, else Keras
    engine.probabilities(images_uint8)                   # (n, 10) float32
    engine = load_engines(["runs/a", "runs/b"], tta=True)  # an ensemble with flip TTA, as one engine
    engine = load_engines(["runs/a"], tta=True, tta_shift=1)  # and shifts of a pixel each way (18 views)
    batcher = MicroBatcher(engine, max_batch=256, max_delay=0.002)
    probabilities = await batcher.submit(images_uint8)   # from concurrent requests

No `model.predict` per request (its set-up costs milliseconds): Keras runs `model(x)` directly,
ONNX Runtime runs the exported graph. Concurrent requests are gathered for at most `max_delay`
seconds or `max_batch` images and run as one batch in a worker thread, so the event loop keeps
accepting requests while the model works.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import os
from pathlib import Path

import numpy as np

from fmnist import runs
from fmnist.evaluate import PREDICT_BATCH_SIZE, in_batches, predict_logits, softmax, tta_views
from fmnist.export import EXPORT_DIR, ONNX_FILE, onnx_session, run_onnx


@dataclasses.dataclass
class KerasEngine:
    model: object
    platform: str = "keras"

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        return softmax(predict_logits(self.model, images)).astype(np.float32)


@dataclasses.dataclass
class OnnxEngine:
    session: object
    platform: str = "onnxruntime_onnx"

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if len(images) <= PREDICT_BATCH_SIZE:
            return run_onnx(self.session, images)
        return np.concatenate(in_batches(functools.partial(run_onnx, self.session), images))  # as Keras' engine predicts


@dataclasses.dataclass
class AveragingEngine:
    """Several engines (an ensemble) and/or test-time augmentation's views of each image: probabilities averaged."""

    engines: list
    tta: bool = False  # each image and its mirror image
    tta_shift: int = 0  # with tta, both also shifted by up to this many pixels each way (evaluate.tta_views)

    @property
    def platform(self) -> str:
        return self.engines[0].platform

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        # All the views in one call per engine: one image's 18 views as 18 calls took 6-14 times as long (BENCHMARKS.md)
        views = tta_views(images, self.tta_shift) if self.tta else [images]
        stacked = [engine.probabilities(np.concatenate(views)) for engine in self.engines]
        per_view = [each.reshape(len(views), len(images), each.shape[-1]) for each in stacked]  # shape[-1]: 0 images too
        return np.mean(per_view, axis=(0, 1), dtype=np.float32)


def load_engines(run_dirs: list[str | Path], engine: str = "auto", threads: int | None = None, tta: bool = False,
                 tta_shift: int = 0):  # fmt: skip
    """One engine for several runs (their probabilities averaged) and TTA; a plain engine for one run without."""
    engines = [load_engine(run_dir, engine, threads) for run_dir in run_dirs]
    return engines[0] if len(engines) == 1 and not tta else AveragingEngine(engines, tta, tta_shift)


def load_engine(run_dir: str | Path, engine: str = "auto", threads: int | None = None):
    # threads: ONNX Runtime's intra-op threads (default: all cores; a server with several workers gives each fewer)
    """ONNX Runtime when RUN/export/model.onnx exists (or engine="onnx"), Keras otherwise."""
    onnx_path = Path(run_dir) / EXPORT_DIR / ONNX_FILE
    if engine == "onnx" or (engine == "auto" and onnx_path.exists()):
        if not onnx_path.exists():
            raise runs.RunError(f"{onnx_path} is missing; run `fmnist export {run_dir} --format onnx` first")
        try:
            session = onnx_session(onnx_path, threads or os.cpu_count())
        except Exception as error:  # ONNX Runtime's errors (InvalidProtobuf, Fail, ...) share no other base class
            raise runs.RunError(f"{onnx_path} could not be loaded ({str(error).strip()}); export it again with `fmnist "
                                f"export {run_dir} --format onnx`, or use Keras with --engine keras") from None  # fmt: skip
        return OnnxEngine(session)
    return KerasEngine(runs.load_model(run_dir))


class MicroBatcher:
    """Gather concurrent requests into batches while the model is busy; one batch runs at a time.

    When the model is idle, a request waits at most `max_delay` seconds for others to join it
    (or until `max_batch` images are waiting). While a batch runs, new requests pile up and go
    together as soon as it finishes, so batches grow with the load (adaptive batching, as TF
    Serving does), up to `max_batch` images per model call: more run as several calls in a row.
    The model runs in its own thread; the event loop keeps serving meanwhile. `on_batch` is
    called with the number of images of each model call.
    """

    def __init__(self, engine, max_batch: int = 256, max_delay: float = 0.002, on_batch=None):
        self.engine, self.max_batch, self.max_delay, self.on_batch = engine, max_batch, max_delay, on_batch
        self.pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self.pending_images = 0
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fmnist-model")
        self.tasks: set[asyncio.Task] = set()

    async def stop(self) -> None:
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.executor.shutdown(wait=False)

    async def submit(self, images: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.pending.append((images, future))
        self.pending_images += len(images)
        if not self.busy:
            if self.pending_images >= self.max_batch:
                self._flush()
            elif self.timer is None:
                self.timer = loop.call_later(self.max_delay, self._flush)
        return await future

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.busy or not self.pending:
            return  # the running batch flushes what waits when it ends
        batch, self.pending, self.pending_images = self.pending, [], 0
        self.busy = True
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _run_model(self, images: np.ndarray) -> list[np.ndarray]:
        """In the model's thread: the probabilities in calls of at most `max_batch` images each."""
        # What piled up while the model was busy, or one large request, can hold more than max_batch images.
        return in_batches(self.engine.probabilities, images, self.max_batch)

    async def _run_batch(self, batch) -> None:
        images = np.concatenate([item for item, _ in batch])
        try:
            parts = await asyncio.get_running_loop().run_in_executor(self.executor, self._run_model, images)
        except Exception as error:  # the requests get the error; the batcher lives on
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            for part in parts if self.on_batch else ():
                self.on_batch(len(part))
            probabilities = np.concatenate(parts)
            start = 0
            for item, future in batch:
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(probabilities[start : start + len(item)])
                start += len(item)
        finally:
            self.busy = False
            self._flush()
