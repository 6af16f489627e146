"""The model, shared by concurrent requests of ``serve``: one call for all who wait.

:class:`ModelBatcher` queues the digits of each request; while the model runs on one batch
the next requests queue, and the next call takes all of them. The model it calls can be
replaced while it serves (:meth:`ModelBatcher.swap`): between two calls, never during one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Digits per model call when requests are batched together.
MAX_MODEL_BATCH = 512
# Probabilities are answered to this many decimals: enough for any use, and short JSON.
PROBABILITY_DECIMALS = 6


class ModelAnswerError(RuntimeError):
    """The model answered something that is not probabilities: NaN or infinite values, or
    the wrong shape. Never passed on as an answer (a NaN would read as digit 0)."""


class ModelBatcher:
    """Runs ``predict_fn`` on the images of all requests waiting, in one call.

    Requests queue while the model is busy; each call takes everything queued (up to
    ``max_images``), after waiting ``window_seconds`` for more. The model runs in one worker
    thread, so the event loop keeps accepting and parsing requests meanwhile; with one
    client at a time every call has one request and nothing waits. A request whose answers
    are not finite probabilities of 10 digits gets :class:`ModelAnswerError` instead.
    :meth:`swap` replaces ``predict_fn`` for the calls that start after it.
    """

    def __init__(self, predict_fn: Callable[[np.ndarray], np.ndarray],
                 max_images: int = MAX_MODEL_BATCH, window_seconds: float = 0.0):
        if max_images < 1 or window_seconds < 0:
            raise ValueError("max_images must be >= 1 and window_seconds >= 0")
        self.predict_fn = predict_fn
        self.max_images = max_images
        self.window_seconds = window_seconds
        self.model_calls = 0
        self.images = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None

    def swap(self, predict_fn: Callable[[np.ndarray], np.ndarray]) -> None:
        """Call ``predict_fn`` from the next model call on (from any thread): a call in
        progress finishes on the function it started with, and so do its requests."""
        self.predict_fn = predict_fn

    async def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (n, 10) for ``pixels`` (n, 28, 28); more than ``max_images`` run alone."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first request, or a test client's new event loop
            self._loop, self._queue = loop, asyncio.Queue()
            self._task = loop.create_task(self._serve_batches(self._queue))
        future = loop.create_future()
        self._queue.put_nowait((pixels, future))
        return await future

    async def _serve_batches(self, queue: asyncio.Queue) -> None:
        carried = None  # a request that did not fit into the previous batch
        while True:
            batch = [carried or await queue.get()]
            carried = None
            if self.window_seconds:
                await asyncio.sleep(self.window_seconds)
            count = len(batch[0][0])
            while not queue.empty():
                item = queue.get_nowait()
                if count + len(item[0]) > self.max_images:
                    carried = item
                    break
                batch.append(item)
                count += len(item[0])
            await self._run(batch)

    async def _run(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        pixels = np.concatenate([item[0] for item in batch])
        loop = asyncio.get_running_loop()
        predict_fn = self.predict_fn  # the whole batch runs on one model, whatever swaps
        try:
            probabilities = await loop.run_in_executor(self._executor, predict_fn, pixels)
        except Exception as error:  # noqa: BLE001 - handed to every waiting request
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self.model_calls += 1
        self.images += len(pixels)
        probabilities = np.asarray(probabilities)
        if probabilities.shape != (len(pixels), 10):
            error = ModelAnswerError(f"the model answered shape {probabilities.shape} for "
                                     f"{len(pixels)} digits, not ({len(pixels)}, 10)")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        offset = 0
        for item_pixels, future in batch:
            answers = probabilities[offset:offset + len(item_pixels)]
            offset += len(item_pixels)
            if future.done():  # the client went away
                continue
            if np.isfinite(answers).all():
                future.set_result(answers)
            else:
                future.set_exception(ModelAnswerError(
                    "the model answered NaN or infinite probabilities (a broken model file?)"))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
