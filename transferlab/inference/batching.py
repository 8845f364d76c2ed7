"""Micro-batching for the server: requests that arrive together go through the model together.

Each request's images join a queue; one worker takes what is queued (waiting at most ``window_s`` for
more, up to ``max_batch`` images), runs the batch in a single model thread and hands every request
its own rows back. While the model runs, new requests queue up, so under load batches fill by
themselves and at low load a request waits no more than the window. ``max_batch=1`` is the server
that runs one request at a time (the reference of benchmarks/serve.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def model_thread() -> ThreadPoolExecutor:
    """The one thread in which a server loads, warms up and runs its model.

    PyTorch's OpenMP keeps a team of worker threads for each thread that starts parallel work. Once a
    second thread has run the model, a lone image takes about twice as long in either of them (lite0 on
    2 cores: 16-22 ms before, 43-46 ms after; batches of 8 move by a tenth), so a model loaded in the
    main thread and run in another is slow at low load.
    """
    return ThreadPoolExecutor(1, thread_name_prefix="model")


def load_in_model_thread(load: Callable[[], Any]) -> tuple[Any, ThreadPoolExecutor]:
    """``load()`` (a backend) run in a new model thread, and that thread, for ``server.make_app``: every
    model call then comes from the thread that built and warmed up the model."""
    executor = model_thread()
    return executor.submit(load).result(), executor


class MicroBatcher:
    """Run ``fn(items) -> rows`` (one row per item) on batches gathered from concurrent ``submit`` calls,
    in ``executor``'s one thread (``model_thread()``: a new one when not given)."""

    def __init__(self, fn: Callable[[list], list], max_batch: int = 32, window_s: float = 0.005,
                 executor: ThreadPoolExecutor | None = None):
        if max_batch < 1 or window_s < 0:
            raise ValueError("max_batch >= 1 and window_s >= 0")
        self.fn, self.max_batch, self.window_s = fn, max_batch, window_s
        self.executor = executor or model_thread()
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches: list[int] = []  # the size of every batch run (for /health and the benchmark)
        self.busy_s = 0.0  # seconds the model thread has spent on batches

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._worker())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: list) -> list:
        """This request's rows, computed in some batch with other requests' items."""
        if self.queue is None:
            await self.start()
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((items, future))
        return await future

    async def run_alone(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the model thread (between batches), e.g. Grad-CAM."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def _gather(self) -> list[tuple[list, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        group = [await self.queue.get()]
        count, deadline = len(group[0][0]), loop.time() + self.window_s
        while count < self.max_batch:
            try:
                nxt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                wait = deadline - loop.time()
                if wait <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), wait)
                except TimeoutError:
                    break
            group.append(nxt)
            count += len(nxt[0])
        return group

    def _timed(self, flat: list) -> list:
        start = time.perf_counter()
        try:
            return self.fn(flat)
        finally:
            self.busy_s += time.perf_counter() - start

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = await self._gather()
            live = [(items, f) for items, f in group if not f.done()]  # a client that left is not computed
            flat = [x for items, _ in live for x in items]
            if not flat:
                continue
            self.batches.append(len(flat))
            try:
                rows = await loop.run_in_executor(self.executor, self._timed, flat)
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error, the worker lives on
                for _, f in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            start = 0
            for items, f in live:
                if not f.done():
                    f.set_result(rows[start:start + len(items)])
                start += len(items)
