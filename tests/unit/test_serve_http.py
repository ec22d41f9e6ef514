"""``modelshard serve`` over HTTP, on loopback only: predictions as the module gives them, a
one-line 4xx for each kind of bad request, a damaged model refused while the others serve,
batching, limits, metrics, graceful shutdown, and the status page in a real headless
Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import torch
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from modelshard.catalog.catalog import Catalog
from modelshard.errors import UsageError
from modelshard.serve import ModelPool, Server
from modelshard.serve import registry as reg
from tests.unit.test_serve_pool import manifest, nbytes, push_mlp, rows

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def cat(tmp_path) -> str:
    return str(tmp_path / "catalog")


def run(cat: str, body, **options):
    """Start a server over ``cat`` on 127.0.0.1, run ``body(session, url, server)``, stop."""
    pool_options = {k: options.pop(k) for k in list(options) if k in ("budget_bytes", "alias_ttl_s")}
    pool = ModelPool(cat, budget_bytes=pool_options.pop("budget_bytes", 1 << 24), **pool_options)
    server = Server(pool, **options)

    async def main():
        ts = TestServer(server.app, host="127.0.0.1")
        await ts.start_server()
        server.ready = True
        try:
            async with ClientSession() as session:
                return await body(session, f"http://127.0.0.1:{ts.port}", server)
        finally:
            await ts.close()

    return asyncio.run(main())


async def post(session, url, key, payload=None, *, data=None):
    async with session.post(f"{url}/v1/models/{key}:predict", json=payload if data is None else None,
                            data=data) as r:
        return r.status, await r.json()


def test_predict_models_health_and_metrics(cat):
    model = push_mlp(cat, "a", [8, 16, 3])
    x = rows(3, 8)

    async def body(s, url, server):
        status, got = await post(s, url, "a@prod", {"records": [{"x": r} for r in x], "output": "topk:2"})
        assert status == 200 and got["model"] == "a@1"
        want = model(torch.tensor(x)).softmax(-1).topk(2)
        assert [[c for c, _ in p] for p in got["predictions"]] == want.indices.tolist()
        async with s.get(f"{url}/v1/models") as r:
            models = (await r.json())["models"]
        assert models[0]["model"] == "a@1" and models[0]["keys"] == ["a@prod"]
        assert models[0]["resident_bytes"] == models[0]["bytes"] == nbytes(cat, "a@1")
        async with s.get(f"{url}/healthz") as r:
            assert r.status == 200
        async with s.get(f"{url}/readyz") as r:
            assert r.status == 200
        async with s.get(f"{url}/metrics") as r:
            text = await r.text()
        assert 'modelshard_requests_total{code="200",model="a@prod"} 1.0' in text
        assert 'modelshard_request_seconds_count{model="a@prod"} 1.0' in text
        assert re.search(r"^modelshard_shard_misses_total 1\.0$", text, re.M)
        # A local catalog's file is on this node's disk.
        assert re.search(r"^modelshard_shard_local_reads_total 1\.0$", text, re.M)
        assert re.search(r"^modelshard_shard_remote_reads_total 0\.0$", text, re.M)
        assert re.search(r"^modelshard_budget_bytes 1\.6777216e\+07$", text, re.M)
        server.ready = False
        async with s.get(f"{url}/readyz") as r:
            assert r.status == 503

    run(cat, body)


def test_bad_requests_get_a_4xx_with_one_line_reason(cat):
    push_mlp(cat, "a", [8, 3])
    push_mlp(cat, "big", [256, 256, 3])

    async def body(s, url, server):
        cases = [
            (await post(s, url, "nope@prod", {"records": [{"x": [0] * 8}]}), 404, "nope"),
            (await post(s, url, "a@prod", data=b"{not json"), 400, "not JSON"),
            (await post(s, url, "a@prod", {"rows": []}), 400, '"records"'),
            (await post(s, url, "a@prod", {"records": []}), 400, "empty"),
            (await post(s, url, "a@prod", {"records": [{"x": [0] * 8}], "output": "top"}), 400, "--output"),
            (await post(s, url, "a@prod", {"records": [{"x": [0] * 8}], "input": "text"}), 400, "--input"),
            (await post(s, url, "a@prod", {"records": [{"x": [0] * 8}, {"x": [1, 2]}]}), 422,
             "record 1: 2 features; the model takes 8"),
            (await post(s, url, "a@prod", {"records": [{"x": [0] * 8}] * 11}), 413, "at most 10"),
            (await post(s, url, "a@prod", data=b'{"records": [' + b"1," * 5000 + b"1]}"), 413, ""),
            (await post(s, url, "big@prod", {"records": [{"x": [0] * 256}]}), 507, "memory budget"),
        ]
        for (status, got), want_status, words in cases:
            assert status == want_status, got
            assert "\n" not in got["error"] and words in got["error"], got

    run(cat, body, max_body_bytes=4096, max_records=10, budget_bytes=nbytes(cat, "a@1") * 4)


def test_a_damaged_model_gets_503_and_the_others_keep_serving(cat):
    push_mlp(cat, "bad", [8, 4])
    push_mlp(cat, "good", [8, 4], seed=1)
    m = manifest(cat, "bad@1")
    path = os.path.join(Catalog(cat).version_dir("bad", "1"), m.shards[0].path)
    with open(path, "r+b") as f:
        f.seek(m.shards[0].size - 5)
        f.write(b"\x00\x01\x02")

    async def body(s, url, server):
        for _ in range(2):
            status, got = await post(s, url, "bad@prod", {"records": [{"x": [0] * 8}]})
            assert status == 503 and "bad@1 failed verification" in got["error"]
            status, got = await post(s, url, "good@prod", {"records": [{"x": [0] * 8}]})
            assert status == 200

    run(cat, body)


def test_concurrent_requests_to_one_model_are_batched(cat):
    model = push_mlp(cat, "a", [64, 512, 512, 10])
    x = rows(64, 64)
    want = model(torch.tensor(x)).argmax(-1).tolist()

    async def body(s, url, server):
        got = await asyncio.gather(*(post(s, url, "a@prod", {"records": [{"x": r}]}) for r in x))
        assert [status for status, _ in got] == [200] * len(x)
        assert [p["predictions"][0] for _, p in got] == want  # each its own record back
        async with s.get(f"{url}/metrics") as r:
            text = await r.text()
        batches = float(re.search(r"^modelshard_batch_records_count (\S+)$", text, re.M)[1])
        assert batches < len(x)  # several requests went together

    run(cat, body)


def test_per_model_concurrency_limit_and_timeout(cat, monkeypatch):
    push_mlp(cat, "a", [8, 3])
    real = ModelPool.run

    def slow(self, *args, **kwargs):  # a batch that runs long
        time.sleep(0.6)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ModelPool, "run", slow)

    async def body(s, url, server):
        req = {"records": [{"x": [0] * 8}]}
        got = await asyncio.gather(post(s, url, "a@prod", req), post(s, url, "a@prod", req))
        statuses = sorted(status for status, _ in got)
        assert statuses == [200, 429] and any("limit" in g["error"] for st, g in got if st == 429)

    run(cat, body, max_concurrency=1)

    async def body2(s, url, server):
        status, got = await post(s, url, "a@prod", {"records": [{"x": [0] * 8}]})
        assert status == 504 and "0.2 s" in got["error"]

    run(cat, body2, timeout_s=0.2)


def test_a_batch_fetching_its_shards_does_not_hold_up_one_in_memory(cat):
    push_mlp(cat, "hot", [8, 3])
    push_mlp(cat, "cold", [8, 3], seed=1)

    async def body(s, url, server):
        req = {"records": [{"x": [0] * 8}]}
        assert (await post(s, url, "hot@prod", req))[0] == 200  # in memory from now on
        fetch = server.pool.scheduler._fetch

        def slow_fetch(ref):
            if "cold" in ref.path:
                time.sleep(1.5)
            return fetch(ref)

        server.pool.scheduler._fetch = slow_fetch
        cold = asyncio.ensure_future(post(s, url, "cold@prod", req))
        await asyncio.sleep(0.2)  # the cold batch is fetching now
        t0 = time.perf_counter()
        assert (await post(s, url, "hot@prod", req))[0] == 200
        hot_s = time.perf_counter() - t0
        assert not cold.done() and hot_s < 1.0, hot_s  # one worker, yet not behind the fetch
        assert (await cold)[0] == 200

    run(cat, body, workers=1)


# -- the command, as a process --------------------------------------------------------------
@pytest.fixture
def served(cat, tmp_path):
    """``modelshard serve`` on 127.0.0.1, a free port, a local registry; yields (url, proc)."""
    push_mlp(cat, "a", [8, 16, 3])
    push_mlp(cat, "b", [8, 4], seed=2)
    push_mlp(cat, "slow", [8, 2048, 2048, 3], seed=3, shard_size=4 << 20)
    registry = str(tmp_path / "registry")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelshard", "serve", "--catalog", cat, "--budget", "64M",
         "--port", "0", "--pin", "b@prod", "--registry", registry],
        stderr=subprocess.PIPE, text=True, env=env)
    url = None
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        if m := re.search(r"listening on (http://\S+)", line):
            url = m[1]
    assert url, f"the server did not start (exit {proc.poll()})"
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
    try:
        yield url, proc, registry
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def http(url: str, data: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.loads(r.read())


def test_the_command_serves_registers_and_stops_gracefully_on_sigterm(served):
    url, proc, registry = served
    assert http(f"{url}/readyz")[0] == 200
    entries = reg.replicas(registry, check=True)
    assert [f"http://{e['host']}:{e['port']}" for e in entries] == [url]
    models = {m["model"]: m for m in http(f"{url}/v1/models")[1]["models"]}
    assert models["b@1"]["pinned"] and models["b@1"]["resident_shards"] == models["b@1"]["shards"]
    result = {}

    def slow_request() -> None:
        result["got"] = http(f"{url}/v1/models/slow@prod:predict",
                             {"records": [{"x": r} for r in rows(1000, 8)], "output": "scores"})

    t = threading.Thread(target=slow_request)
    t.start()
    deadline = time.monotonic() + 60
    while not any(m["in_flight"] for m in http(f"{url}/v1/models")[1]["models"]):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)  # while the request is in flight
    t.join(60)
    assert proc.wait(60) == 0
    assert result["got"][0] == 200 and len(result["got"][1]["predictions"]) == 1000
    assert reg.replicas(registry) == []  # unregistered as it stopped


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI") != "true",
                    reason="no chromium here (apt-get install chromium); CI installs it")
def test_status_page_in_headless_chromium(served, tmp_path):
    url, proc, _ = served
    for _ in range(3):
        http(f"{url}/v1/models/a@prod:predict", {"records": [{"x": [0.5] * 8}]})
    time.sleep(2.5)  # a few hit-rate samples
    out = subprocess.run(
        [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000", "--dump-dom",
         f"{url}/status"], capture_output=True, text=True, timeout=120)
    dom = out.stdout
    assert out.returncode == 0, out.stderr[-2000:]
    # Filled in by the page's script from /v1/status: the models, their shards, the budget.
    assert re.search(r'<tr data-model="a@1"><td>a@1</td><td>a@prod</td>', dom), dom[-3000:]
    assert re.search(r'<tr data-model="b@1">.*?<td>yes</td>', dom)
    assert re.search(r'id="state">ready<', dom)
    assert re.search(r'held of 64\.0 MiB', dom)
    assert re.search(r"hits \d+, misses \d+", dom)
    assert re.search(r'<polyline [^>]*points="[\d.]+,[\d.]+', dom)


def test_torch_threads_per_batch_are_an_option_forwarded_to_replicas(cat):
    import argparse

    from modelshard.commands.serve import _serve_argv
    from modelshard.serve import serve

    with ModelPool(cat, budget_bytes=1 << 20) as pool, pytest.raises(UsageError, match="threads=0"):
        asyncio.run(serve(Server(pool), threads=0))
    args = argparse.Namespace(budget=1 << 20, policy="gdsf", alias_ttl=2.0, max_body=1 << 20, max_records=8,
                              timeout=30.0, max_concurrency=4, workers=4, threads=2, pin=[], cache_dir=None,
                              cache_max_bytes=None, idle_release=None, trust_code=False)
    argv = _serve_argv(args)
    assert argv[argv.index("--threads") + 1] == "2"
