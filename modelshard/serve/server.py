"""``modelshard serve``: online prediction for many models under one memory budget (aiohttp).

Endpoints (JSON in and out):

* ``POST /v1/models/{name@alias}:predict`` with ``{"records": [...], "input": "features",
  "output": "class"}``: the records are the JSON objects of ``predict``'s JSON lines (``x``
  for features, ``input_ids`` or another field for tokens, a text field), ``input`` and
  ``output`` as ``predict --input/--output``; the answer is ``{"model": "name@version",
  "predictions": [...]}``, one value per record, in order. Every record of a request goes
  through one version, even while its alias moves.
* ``GET /v1/models``: each version known, its bytes and the bytes in memory;
  ``GET /v1/status``: that and the scheduler's counters and hit rate over time, which the
  HTML page ``GET /status`` shows; ``GET /metrics``: Prometheus; ``GET /healthz`` (the
  process answers), ``GET /readyz`` (it serves: pins loaded, not shutting down).

Errors are ``{"error": "one line"}`` with 400 (bad JSON, bad options), 404 (unknown model),
413 (body over ``max_body_bytes`` or more than ``max_records`` records), 422 (a record the
model cannot take: which and why), 429 (``max_concurrency`` requests to one model in
flight), 503 (a model that failed verification, or shutting down), 504 (over
``timeout_s``), 507 (a model larger than the budget).

Concurrent requests to one version with the same input and output are batched: while a
batch runs, the requests that arrive wait and go together in the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from modelshard.errors import ModelShardError, NotFoundError, UsageError
from modelshard.jobs.predict.task import InputSpec, OutputSpec
from modelshard.serve.pool import ModelPool, TooLargeError, UnavailableError

log = logging.getLogger(__name__)

_STATUS = {NotFoundError: 404, TooLargeError: 507, UsageError: 400, UnavailableError: 503}
_HISTORY = 300  # status samples kept (one a second)
_WAITING = 16  # batches that may wait for room or fetch their shards at once, besides those running


class BadRecords(UsageError):
    """Records of a request that the model cannot take (422)."""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:500]


class Server:
    """The HTTP application over a :class:`ModelPool` (see the module docstring)::

        server = Server(pool, max_body_bytes=1 << 20)
        web.run_app(server.app, host="127.0.0.1", port=8080)
    """

    def __init__(self, pool: ModelPool, *, max_body_bytes: int = 1 << 20, max_records: int = 1024,
                 timeout_s: float = 30.0, max_concurrency: int = 64, workers: int = 4) -> None:
        for name, value in (("max_body_bytes", max_body_bytes), ("max_records", max_records),
                            ("max_concurrency", max_concurrency), ("workers", workers)):
            if value < 1:
                raise UsageError(f"{name}={value}: give 1 or more")
        if timeout_s <= 0:
            raise UsageError(f"timeout_s={timeout_s}: give a positive number of seconds")
        self.pool = pool
        self.max_records, self.timeout_s, self.max_concurrency = max_records, timeout_s, max_concurrency
        self.ready = False
        self._executor = ThreadPoolExecutor(workers + _WAITING, thread_name_prefix="modelshard-serve")
        self._running_batches = threading.BoundedSemaphore(workers)
        self._fetching = threading.BoundedSemaphore(workers)
        self._pending: dict[tuple[str, str, str], list[tuple[list, asyncio.Future]]] = {}
        self._running: set[tuple[str, str, str]] = set()
        self._in_flight: dict[str, int] = {}
        self._history: deque[dict[str, float]] = deque(maxlen=_HISTORY)
        self._last = (0, 0)
        self._sampler: asyncio.Task | None = None
        self.registry = CollectorRegistry()
        self._requests = Counter("modelshard_requests", "Prediction requests by model and status",
                                 ["model", "code"], registry=self.registry)
        self._latency = Histogram("modelshard_request_seconds", "Prediction request latency",
                                  ["model"], registry=self.registry,
                                  buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self._batch = Histogram("modelshard_batch_records", "Records per model batch",
                                registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024))
        self.registry.register(_PoolCollector(pool))
        app = web.Application(client_max_size=max_body_bytes, middlewares=[self._errors])
        app.add_routes([
            web.post(r"/v1/models/{key:[^/:]+}:predict", self.predict),
            web.get("/v1/models", self.models),
            web.get("/v1/status", self.status),
            web.get("/status", self.status_page),
            web.get("/metrics", self.metrics),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
        ])
        app.on_startup.append(self._start_sampling)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        self.app = app

    # -- handlers --------------------------------------------------------------------------
    @web.middleware
    async def _errors(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            reason = e.text if e.text and not e.text.startswith(f"{e.status}:") else e.reason
            return _json({"error": _one_line(reason)}, e.status)
        except BadRecords as e:
            return _json({"error": _one_line(e), "errors": e.args[1]}, 422)
        except ModelShardError as e:
            status = next((s for cls, s in _STATUS.items() if isinstance(e, cls)), 500)
            return _json({"error": _one_line(e)}, status)
        except TimeoutError:
            return _json({"error": f"no answer within {self.timeout_s} s; retry, or send fewer "
                                   "records"}, 504)

    async def predict(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        start = time.perf_counter()
        code = 500
        try:
            response = await self._predict(request, key)
            code = response.status
            return response
        except web.HTTPException as e:
            code = e.status
            raise
        except BadRecords:
            code = 422
            raise
        except ModelShardError as e:
            code = next((s for cls, s in _STATUS.items() if isinstance(e, cls)), 500)
            raise
        except TimeoutError:
            code = 504
            raise
        finally:
            self._requests.labels(key, str(code)).inc()
            self._latency.labels(key).observe(time.perf_counter() - start)

    async def _predict(self, request: web.Request, key: str) -> web.Response:
        if not self.ready:
            raise UnavailableError("the server is not ready (starting or shutting down); retry")
        body = await request.read()  # 413 past client_max_size
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise UsageError(f"the body is not JSON ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise UsageError('the body must be a JSON object with "records": a list of records')
        records = data["records"]
        if len(records) > self.max_records:
            raise web.HTTPRequestEntityTooLarge(
                max_size=self.max_records, actual_size=len(records),
                text=f"{len(records)} records; at most {self.max_records} per request")
        if not records:
            raise UsageError('"records" is empty: send one record or more')
        inputs, output = data.get("input", "features"), data.get("output", "class")
        if not isinstance(inputs, str) or not isinstance(output, str):
            raise UsageError('"input" and "output" must be strings, as predict --input/--output')
        InputSpec.parse(inputs)
        OutputSpec.parse(output)
        if self._in_flight.get(key, 0) >= self.max_concurrency:
            raise web.HTTPTooManyRequests(text=f"{key} has {self.max_concurrency} requests in "
                                               "flight (the per-model limit); retry later")
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(self.timeout_s):
                target = self.pool.resolved(key) or await loop.run_in_executor(
                    self._executor, self.pool.resolve, key)
                results = await asyncio.shield(self._submit((target, inputs, output), records))
        finally:
            self._in_flight[key] -= 1
        bad = [{"index": i, "error": r} for i, (kind, r) in enumerate(results) if kind == "bad"]
        if bad:
            raise BadRecords(f"record {bad[0]['index']}: {bad[0]['error']}"
                             + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""), bad)
        return _json({"model": target, "predictions": [v for _, v in results]})

    async def _submit(self, batch_key: tuple[str, str, str], records: list) -> list:
        fut = asyncio.get_running_loop().create_future()
        self._pending.setdefault(batch_key, []).append((records, fut))
        if batch_key not in self._running:
            self._running.add(batch_key)
            asyncio.get_running_loop().create_task(self._drain(batch_key))
        return await fut

    async def _drain(self, batch_key: tuple[str, str, str]) -> None:
        """Run the requests waiting on one version, all of them together, until none wait."""
        target, inputs, output = batch_key
        loop = asyncio.get_running_loop()
        try:
            while self._pending.get(batch_key):
                waiting = self._pending.pop(batch_key)
                merged = [r for records, _ in waiting for r in records]
                self._batch.observe(len(merged))
                try:
                    results = await loop.run_in_executor(
                        self._executor, functools.partial(self._run_batch, target, merged, inputs, output))
                except Exception as e:  # every request of the batch gets the error
                    for _, fut in waiting:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                pos = 0
                for records, fut in waiting:
                    if not fut.done():
                        fut.set_result(results[pos:pos + len(records)])
                    pos += len(records)
        finally:
            self._running.discard(batch_key)

    def _run_batch(self, target: str, records: list, inputs: str, output: str) -> list:
        """One batch (on an executor thread). One whose shards are not all in memory is
        admitted and fetches them as one of at most ``workers`` such batches at once (no
        more models half-fetched and held than ``workers``); then it runs as one of at most
        ``workers`` at once. A batch whose shards are in memory never waits behind fetches."""
        with contextlib.ExitStack() as stack:
            with contextlib.nullcontext() if self.pool.in_memory(target) else self._fetching:
                held = stack.enter_context(self.pool.hold(target))
            with self._running_batches:
                return self.pool.run(held, records, inputs=inputs, output=output)

    async def models(self, request: web.Request) -> web.Response:
        return _json({"budget_bytes": self.pool.budget_bytes, "models": self.pool.models()})

    async def status(self, request: web.Request) -> web.Response:
        s = self.pool.scheduler.stats()
        return _json({"budget_bytes": s.budget_bytes, "bytes_held": s.bytes_held,
                      "pinned_bytes": s.pinned_bytes, "hits": s.hits, "misses": s.misses,
                      "evictions": s.evictions, "bytes_fetched": s.bytes_fetched,
                      "local_reads": s.local_reads, "remote_reads": s.remote_reads,
                      "ready": self.ready, "models": self.pool.models(), "history": list(self._history)})

    async def status_page(self, request: web.Request) -> web.Response:
        page = resources.files("modelshard.serve").joinpath("status.html").read_text()
        return web.Response(text=page, content_type="text/html")

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"ok": True})

    async def readyz(self, request: web.Request) -> web.Response:
        return _json({"ready": self.ready}, 200 if self.ready else 503)

    # -- life ------------------------------------------------------------------------------
    def _sample(self) -> None:
        s = self.pool.scheduler.stats()
        hits, misses = s.hits - self._last[0], s.misses - self._last[1]
        self._last = (s.hits, s.misses)
        self._history.append({"t": time.time(), "hit_rate": hits / (hits + misses) if hits + misses else None,
                              "bytes_held": s.bytes_held})

    async def _start_sampling(self, app: web.Application) -> None:
        async def sample() -> None:
            loop = asyncio.get_running_loop()
            while True:
                self._sample()
                await loop.run_in_executor(self._executor, self.pool.refresh)
                await asyncio.sleep(1.0)

        self._sampler = asyncio.get_running_loop().create_task(sample())

    async def _on_shutdown(self, app: web.Application) -> None:
        self.ready = False
        self._sampler.cancel()

    async def _on_cleanup(self, app: web.Application) -> None:
        self._executor.shutdown(wait=True)
        self.pool.close()


class _PoolCollector:
    """Prometheus view of the pool's scheduler, read at each scrape."""

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    def collect(self) -> Any:
        s = self.pool.scheduler.stats()
        for name, value, what in (("shard_hits", s.hits, "Shard acquisitions found in memory"),
                                  ("shard_misses", s.misses, "Shard acquisitions that fetched"),
                                  ("shard_evictions", s.evictions, "Shards evicted for room"),
                                  ("shard_bytes_fetched", s.bytes_fetched, "Shard bytes fetched"),
                                  ("shard_idle_releases", s.idle_releases, "Shards freed when idle"),
                                  ("shard_local_reads", s.local_reads,
                                   "Shards fetched from this node (preload cache, a block replica here)"),
                                  ("shard_remote_reads", s.remote_reads, "Shards fetched over the network")):
            yield CounterMetricFamily(f"modelshard_{name}", what, value=value)
        for name, value, what in (("bytes_held", s.bytes_held, "Shard bytes in memory or being fetched"),
                                  ("budget_bytes", s.budget_bytes, "The memory budget"),
                                  ("pinned_bytes", s.pinned_bytes, "Bytes of pinned shards")):
            yield GaugeMetricFamily(f"modelshard_{name}", what, value=value)
        per_model = GaugeMetricFamily("modelshard_model_resident_bytes",
                                      "Bytes of a version's shards in memory", labels=["model"])
        for m in self.pool.models():
            per_model.add_metric([m["model"]], m["resident_bytes"])
        yield per_model


async def serve(server: Server, *, host: str = "127.0.0.1", port: int = 0,
                on_listening: Callable[[str, int], object] | None = None,
                on_stopping: Callable[[], object] | None = None,
                shutdown_timeout_s: float = 30.0, pins: tuple[str, ...] = (),
                threads: int | None = 1) -> None:
    """Run ``server`` until SIGTERM or SIGINT, then shut down gracefully: stop being ready,
    stop accepting, let requests in flight finish (up to ``shutdown_timeout_s``), free the
    pool. ``pins`` are loaded before the server is ready; ``on_listening(host, port)`` is
    called once it listens (port 0: a free port), ``on_stopping()`` as it stops. ``threads``:
    torch's threads per batch (None: torch's default, one per core)."""
    if threads is not None:
        if threads < 1:
            raise UsageError(f"threads={threads}: give 1 or more")
        import torch

        # The server's workers already run batches side by side: torch's default of one
        # thread per core in each of them oversubscribes the cores (on the 2-core VM, 4
        # workers ran 8 threads; docs/benchmarks.md, issue 14).
        torch.set_num_threads(threads)
    runner = web.AppRunner(server.app, shutdown_timeout=shutdown_timeout_s, access_log=None,
                           handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for key in pins:
            await loop.run_in_executor(None, server.pool.pin, key)
        server.ready = True
        if on_listening:
            on_listening(host, bound)
        log.info("serving on %s:%d", host, bound)
        await stop.wait()
    finally:
        server.ready = False
        if on_stopping:
            with contextlib.suppress(Exception):
                on_stopping()
        await runner.cleanup()
