"""Inference engines and the micro-batcher that the server puts in front of them.

    engine = load_engine("runs/baseline")                # ONNX Runtime if exported, else Keras
    engine.probabilities(images_uint8)                   # (n, 10) float32
    batcher = MicroBatcher(engine, max_batch=256, max_delay=0.002)
    probabilities = await batcher.submit(images_uint8)   # from concurrent requests

No `model.predict` per request (its set-up costs milliseconds): Keras runs `model(x)` directly,
ONNX Runtime runs the exported graph. Concurrent requests are gathered for at most `max_delay`
seconds or `max_batch` images and run as one batch in a worker thread, so the event loop keeps
accepting requests while the model works.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

import numpy as np

from fmnist import runs
from fmnist.evaluate import predict_logits, softmax
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
        return run_onnx(self.session, np.ascontiguousarray(images, dtype=np.uint8))


def load_engine(run_dir: str | Path, engine: str = "auto", threads: int | None = None):
    """ONNX Runtime when RUN/export/model.onnx exists (or engine="onnx"), Keras otherwise."""
    onnx_path = Path(run_dir) / EXPORT_DIR / ONNX_FILE
    if engine == "onnx" or (engine == "auto" and onnx_path.exists()):
        if not onnx_path.exists():
            raise runs.RunError(f"{onnx_path} is missing; run `fmnist export {run_dir} --format onnx` first")
        return OnnxEngine(onnx_session(onnx_path, threads or os.cpu_count()))
    return KerasEngine(runs.load_model(run_dir))


class MicroBatcher:
    """Gather concurrent requests into batches; one batch runs at a time, in a worker thread."""

    def __init__(self, engine, max_batch: int = 256, max_delay: float = 0.002, on_batch=None):
        self.engine, self.max_batch, self.max_delay, self.on_batch = engine, max_batch, max_delay, on_batch
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.worker:
            self.worker.cancel()
            await asyncio.gather(self.worker, return_exceptions=True)

    async def submit(self, images: np.ndarray) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((images, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self.queue.get()]
            size = len(pending[0][0])
            deadline = loop.time() + self.max_delay
            while size < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
                pending.append(item)
                size += len(item[0])
            await self._run_batch(pending, loop)

    async def _run_batch(self, pending, loop) -> None:
        batch = np.concatenate([images for images, _ in pending])
        try:
            probabilities = await loop.run_in_executor(None, self.engine.probabilities, batch)
        except Exception as error:  # the requests get the error; the batcher lives on
            for _, future in pending:
                if not future.done():
                    future.set_exception(error)
            return
        if self.on_batch:
            self.on_batch(len(batch))
        start = 0
        for images, future in pending:
            if not future.done():  # a client that went away cancelled its future
                future.set_result(probabilities[start : start + len(images)])
            start += len(images)
