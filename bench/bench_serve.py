"""Online prediction of many models under one memory budget (``modelshard serve``), on
loopback: one server process per run, a load generator in this one.

20 MLPs of mixed sizes (log-uniform, ``--min-mb`` to ``--max-mb``, several shards each) in a
catalog; Zipf-distributed requests (``--alpha``) from ``--clients`` closed-loop clients.
Servers compared, side by side in one run (the modes alternate, ``--rounds`` times, the same
request trace per round; medians reported):

* ``shared``: the shared shard scheduler, cost-aware (GDSF), budget = a quarter of the bytes;
* ``lru-models``: what Ray Serve's model multiplexing does: LRU over whole models, a fixed
  number of models per replica (``max_num_models_per_replica``), here as many as the same
  memory holds when they are the largest ones (a count must never run the replica out of
  memory), under the same budget;
* ``per-request``: every model fetched for each batch and dropped after it;
* ``unlimited``: every model fits (budget = all the bytes), measured once warm.

Per mode: p50/p99 latency, requests/s, bytes fetched and peak bytes held during the measured
requests (closed loop: the latency of a saturated server, which mirrors its requests/s);
``--open-rates 40,80`` then sends the same trace again to the same warm server at each fixed
rate (Poisson arrivals) for the latency at that offered load.
``--sources hdfs,cache`` runs every mode twice per round: reading the shards from
HDFS, and through a node-local preload cache in ``--cache-dir`` (filled with every model
before the rounds, as ``modelshard preload`` fills a serving node's; the same cache for
every mode, and the same memory budget: the cache is disk, the budget is the process's
memory). ``--duration S`` instead runs the fixed-rate load test (``--rate`` requests/s on the
shared server for S seconds, from the one source given), sampling the server's RSS and bytes
held every second.

    python bench/bench_serve.py --catalog hdfs:///user/$USER/bench-serve --rounds 3
    python bench/bench_serve.py --catalog hdfs:///user/$USER/bench-serve --sources hdfs,cache \
        --cache-dir /tmp/bench-serve-cache --rounds 3
    python bench/bench_serve.py --catalog hdfs:///user/$USER/bench-serve --duration 600 --rate 40
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

MODES = ("shared", "lru-models", "per-request", "unlimited")
WIDTH = 256


def model_sizes(n: int, lo_mb: float, hi_mb: float, seed: int) -> list[int]:
    """Hidden widths of ``n`` MLPs [WIDTH, h, h, 10] whose weights are log-uniform in size."""
    rng = np.random.default_rng(seed)
    widths = []
    for mb in np.exp(rng.uniform(np.log(lo_mb), np.log(hi_mb), n)):
        n_params = mb * (1 << 20) / 4
        # h^2 + (WIDTH + 12) h = n_params
        widths.append(int((-(WIDTH + 12) + np.sqrt((WIDTH + 12) ** 2 + 4 * n_params)) / 2))
    return widths


def push_models(catalog: str, widths: list[int], shard_mb: int) -> dict[str, int]:
    import modelshard
    from modelshard.catalog.catalog import Catalog
    from modelshard.errors import NotFoundError
    from modelshard.jobs.models import SPEC_ATTR, ModelSpec, mlp

    cat = Catalog(catalog)
    out = {}
    for i, h in enumerate(widths):
        name = f"m{i:02d}"
        try:
            m = cat.manifest(*cat.resolve(f"{name}@prod"))
        except NotFoundError:
            sizes = [WIDTH, h, h, 10]
            model = mlp(sizes=sizes, seed=i)
            m = modelshard.push({k: v.numpy() for k, v in model.state_dict().items()}, name,
                                catalog=cat, aliases=["prod"], shard_size=shard_mb << 20,
                                attrs={SPEC_ATTR: ModelSpec("mlp", {"sizes": sizes, "seed": i}).dumps()})
        out[name] = sum(s.size for s in m.shards)
    return out


def run_server(args: argparse.Namespace) -> None:
    """The server process of one run (``server`` subcommand)."""
    from modelshard.loading import open_cache
    from modelshard.serve import ModelPool, Server, serve

    cache = open_cache(args.cache_dir, None) if args.cache_dir else None
    pool = ModelPool(args.catalog, budget_bytes=args.budget, max_models=args.max_models,
                     wait_timeout_s=600, cache=cache)
    server = Server(pool, max_concurrency=1024, workers=args.workers, timeout_s=600)

    def listening(host: str, port: int) -> None:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.rename(args.port_file + ".tmp", args.port_file)

    asyncio.run(serve(server, port=0, on_listening=listening, threads=args.threads or None))


def start_server(catalog: str, budget: int, max_models: int | None, workers: int, tag: str,
                 cache_dir: str | None = None, threads: int = 1) -> tuple[subprocess.Popen, str]:
    port_file = f"/tmp/bench-serve-{os.getpid()}-{tag}.port"
    cmd = [sys.executable, __file__, "server", "--catalog", catalog, "--budget", str(budget),
           "--workers", str(workers), "--threads", str(threads), "--port-file", port_file]
    if max_models is not None:
        cmd += ["--max-models", str(max_models)]
    if cache_dir:
        cmd += ["--cache-dir", cache_dir]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.monotonic() + 120
    while not os.path.exists(port_file):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server {tag} did not start")
        time.sleep(0.1)
    with open(port_file) as f:
        port = int(f.read())
    os.unlink(port_file)
    return proc, f"http://127.0.0.1:{port}"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process ``pid`` has used (its threads together)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def load(url: str, trace: list[str], *, clients: int, rate: float | None = None,
               sampler=None, poisson_seed: int | None = None) -> dict:
    """Send ``trace``'s requests: closed loop with ``clients``, or open loop at ``rate``/s
    (evenly spaced, or Poisson arrivals from ``poisson_seed``)."""
    from aiohttp import ClientSession, ClientTimeout

    body = {"records": [{"x": r} for r in np.random.default_rng(0).standard_normal((4, WIDTH)).tolist()]}
    payload = json.dumps(body).encode()
    latencies: list[float] = []
    errors: list[str] = []
    async with ClientSession(timeout=ClientTimeout(total=600)) as s:
        async def one(key: str) -> None:
            t0 = time.perf_counter()
            async with s.post(f"{url}/v1/models/{key}@prod:predict", data=payload,
                              headers={"Content-Type": "application/json"}) as r:
                await r.read()
                if r.status != 200:
                    errors.append(f"{r.status} {(await r.text())[:200]}")
            latencies.append(time.perf_counter() - t0)

        async def status() -> dict:
            async with s.get(f"{url}/v1/status") as r:
                return await r.json()

        before = await status()
        t0 = time.perf_counter()
        if rate is None:
            it = iter(trace)

            async def client() -> None:
                for key in it:
                    await one(key)

            await asyncio.gather(*(client() for _ in range(clients)))
        else:
            tasks = []
            if poisson_seed is None:
                starts = np.arange(len(trace)) / rate
            else:
                starts = np.cumsum(np.random.default_rng(poisson_seed).exponential(1 / rate, len(trace)))
            for key, start in zip(trace, starts, strict=True):
                delay = t0 + start - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if sampler:
                    sampler()
                tasks.append(asyncio.create_task(one(key)))
            await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
        after = await status()
    lat = np.array(latencies)
    return {"requests": len(trace), "errors": len(errors), "first_errors": errors[:3],
            "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "req_per_s": len(trace) / elapsed,
            "bytes_fetched": after["bytes_fetched"] - before["bytes_fetched"],
            "hit_rate": (after["hits"] - before["hits"]) / max(1, (after["hits"] + after["misses"]
                                                                  - before["hits"] - before["misses"]))}


def peak_sampler(proc: subprocess.Popen, url: str, out: dict) -> None:
    """Background sampling of the server's bytes held (its /v1/status) and RSS."""
    import threading
    import urllib.request

    def loop() -> None:
        while proc.poll() is None and not out.get("stop"):
            try:
                with urllib.request.urlopen(f"{url}/v1/status", timeout=5) as r:
                    held = json.loads(r.read())["bytes_held"]
                out["peak_held"] = max(out.get("peak_held", 0), held)
                out["peak_rss"] = max(out.get("peak_rss", 0), rss_bytes(proc.pid))
                out.setdefault("series", []).append((time.time(), held, rss_bytes(proc.pid)))
            except OSError:
                pass
            time.sleep(0.2 if out.get("fast", True) else 1.0)

    threading.Thread(target=loop, daemon=True).start()


def one_run(mode: str, args, sizes: dict[str, int], trace: list[str], warm: list[str],
            cache_dir: str | None = None, rates: tuple[float, ...] = ()) -> dict:
    total = sum(sizes.values())
    budget = total // 4
    max_models = None
    if mode == "lru-models":
        max_models = models_that_fit(sizes, budget)
    elif mode == "per-request":
        max_models, budget = 0, total
    elif mode == "unlimited":
        budget = total
    proc, url = start_server(args.catalog, budget, max_models, args.workers, mode, cache_dir, args.threads)
    try:
        asyncio.run(load(url, warm, clients=args.clients))  # warm-up, not measured
        load_before = os.getloadavg()[0]
        peaks: dict = {}
        peak_sampler(proc, url, peaks)
        cpu_before = cpu_seconds(proc.pid)
        result = asyncio.run(load(url, trace, clients=args.clients))
        server_cpu = cpu_seconds(proc.pid) - cpu_before
        peaks["stop"] = True
        result.update(mode=mode, source="cache" if cache_dir else "hdfs", budget=budget,
                      max_models=max_models, peak_held=peaks.get("peak_held", 0),
                      peak_rss=peaks.get("peak_rss", 0),
                      server_cpu_ms_per_request=server_cpu * 1e3 / len(trace),
                      loadavg=(load_before + os.getloadavg()[0]) / 2)
        for rate in rates:  # latency at a fixed offered load, Poisson arrivals, same trace
            fixed = asyncio.run(load(url, trace, clients=0, rate=rate, poisson_seed=len(trace)))
            result.setdefault("open", {})[rate] = {k: fixed[k] for k in ("p50_ms", "p99_ms", "errors",
                                                                          "first_errors")}
        return result
    finally:
        proc.terminate()
        proc.wait(60)


def models_that_fit(sizes: dict[str, int], budget: int) -> int:
    """Ray Serve's ``max_num_models_per_replica`` for a replica of ``budget`` bytes: a count,
    so it must hold the largest models at once without running out of memory."""
    largest = sorted(sizes.values(), reverse=True)
    return max(1, max(k for k in range(len(largest) + 1) if sum(largest[:k]) <= budget))


def zipf_keys(names: list[str], n: int, alpha: float, seed: int) -> list[str]:
    from modelshard.scheduler import zipf_trace

    return [names[i] for i in zipf_trace(len(names), n, alpha=alpha, seed=seed)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("server")
    s.add_argument("--catalog", required=True)
    s.add_argument("--budget", type=int, required=True)
    s.add_argument("--max-models", type=int)
    s.add_argument("--workers", type=int, default=4)
    s.add_argument("--port-file", required=True)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--cache-dir")
    p.add_argument("--catalog", default="hdfs:///user/root/bench-serve")
    p.add_argument("--models", type=int, default=20)
    p.add_argument("--min-mb", type=float, default=2.0)
    p.add_argument("--max-mb", type=float, default=24.0)
    p.add_argument("--shard-mb", type=int, default=4)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per batch (0: torch's default)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--sources", default="hdfs", help="hdfs, cache or both (hdfs,cache): where shards are read")
    p.add_argument("--cache-dir", help="the node-local preload cache for --sources cache")
    p.add_argument("--duration", type=float, help="run the fixed-rate load test for this many seconds")
    p.add_argument("--rate", type=float, default=40.0)
    p.add_argument("--open-rates", default="",
                   help="also measure latency open loop at these rates (requests/s, comma-separated)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.cmd == "server":
        run_server(args)
        return
    sizes = push_models(args.catalog, model_sizes(args.models, args.min_mb, args.max_mb, args.seed),
                        args.shard_mb)
    names = sorted(sizes)
    total = sum(sizes.values())
    print(f"# {len(names)} models, {total / 2**20:.1f} MiB in all, {min(sizes.values()) / 2**20:.1f}.."
          f"{max(sizes.values()) / 2**20:.1f} MiB each; budget {total / 4 / 2**20:.1f} MiB; "
          f"loadavg {os.getloadavg()[0]:.2f}", flush=True)
    sources = args.sources.split(",")
    if args.duration and len(sources) != 1:
        raise SystemExit("--duration runs on one source: --sources hdfs or --sources cache")
    if not args.rounds and not args.duration:  # only the models pushed
        return
    if "cache" in sources:
        if not args.cache_dir:
            raise SystemExit("--sources cache needs --cache-dir")
        from modelshard.loading import preload

        for name in names:
            preload(f"{name}@prod", catalog=args.catalog, cache_dir=args.cache_dir)
    if args.duration:
        fixed_rate(args, sizes, names, args.cache_dir if sources == ["cache"] else None)
        return
    runs: dict[tuple[str, str], list[dict]] = {(src, m): [] for src in sources for m in args.modes.split(",")}
    rates = tuple(float(r) for r in args.open_rates.split(",") if r)
    for r in range(args.rounds):
        trace = zipf_keys(names, args.requests, args.alpha, args.seed + 1 + r)
        warm = zipf_keys(names, args.warmup, args.alpha, args.seed + 101 + r)
        warm_all = names + warm
        # The order rotates from round to round, so that a drift in the machine's load
        # (other work on its cores) does not always fall on the same mode.
        order = list(runs)
        order = order[r % len(order):] + order[:r % len(order)]
        for src, mode in order:
            res = one_run(mode, args, sizes, trace, warm_all if mode == "unlimited" else warm,
                          args.cache_dir if src == "cache" else None, rates)
            runs[src, mode].append(res)
            print(json.dumps({"round": r, **res}), flush=True)
    print("\n| source | server | p50 ms | p99 ms | req/s | server CPU ms/req | MiB fetched | peak MiB held "
          "| hit rate | errors | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    med = {}
    for (src, mode), results in runs.items():
        med[src, mode] = m = {k: statistics.median(x[k] for x in results)
                              for k in ("p50_ms", "p99_ms", "req_per_s", "server_cpu_ms_per_request",
                                        "bytes_fetched", "peak_held", "hit_rate", "loadavg")}
        errors = sum(x["errors"] for x in results)
        print(f"| {src} | {mode} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | {m['req_per_s']:.1f} | "
              f"{m['server_cpu_ms_per_request']:.1f} | {m['bytes_fetched'] / 2**20:.0f} | "
              f"{m['peak_held'] / 2**20:.0f} | {m['hit_rate']:.2f} | {errors} | {m['loadavg']:.1f} |")
    for src in sources:
        for what, key, a, b in (("p99", "p99_ms", "shared", "lru-models"),
                                ("p99", "p99_ms", "unlimited", "lru-models"),
                                ("req/s", "req_per_s", "shared", "unlimited")):
            if (src, a) in runs and (src, b) in runs:
                rounds = [x[key] / y[key] for x, y in zip(runs[src, a], runs[src, b], strict=True)]
                print(f"{src}: {what} {a} / {b}: {med[src, a][key] / med[src, b][key]:.2f} (medians); "
                      f"per round {', '.join(f'{x:.2f}' for x in rounds)}")
    if rates:
        print("\nOpen loop (Poisson arrivals at a fixed rate, the same trace, after the closed loop):\n")
        print("| source | server | " + " | ".join(f"{r:g}/s p50 ms | {r:g}/s p99 ms" for r in rates) + " |")
        print("|---|---|" + "---:|---:|" * len(rates))
        for (src, mode), results in runs.items():
            cells = [f"{statistics.median(x['open'][r][q] for x in results):.1f}"
                     for r in rates for q in ("p50_ms", "p99_ms")]
            print(f"| {src} | {mode} | " + " | ".join(cells) + " |")
        for src in sources:
            for r in rates:
                if (src, "shared") in runs and (src, "lru-models") in runs:
                    per = [x["open"][r]["p99_ms"] / y["open"][r]["p99_ms"]
                           for x, y in zip(runs[src, "shared"], runs[src, "lru-models"], strict=True)]
                    print(f"{src}: open loop {r:g}/s: p99 shared / lru-models: {statistics.median(per):.2f} "
                          f"(median of rounds); per round {', '.join(f'{x:.2f}' for x in per)}")
    failed = [(src, mode, x["first_errors"]) for (src, mode), results in runs.items() for x in results
              if x["errors"]] + [(src, mode, o["first_errors"]) for (src, mode), results in runs.items()
                                 for x in results for o in x.get("open", {}).values() if o["errors"]]
    if failed:  # an error answered at once would flatter that mode's latency and rate
        raise SystemExit(f"requests failed, the figures are not comparable: {failed[0]}")


def per_minute_max(series: list[tuple[float, int, int]]) -> list[int]:
    """The largest RSS sample (MiB) of each minute of ``(time, bytes held, rss)`` samples."""
    out: dict[int, int] = {}
    for t, _, rss in series:
        minute = int((t - series[0][0]) // 60)
        out[minute] = max(out.get(minute, 0), rss)
    return [round(out[m] / 2**20) for m in sorted(out)]


def fixed_rate(args, sizes: dict[str, int], names: list[str], cache_dir: str | None) -> None:
    total = sum(sizes.values())
    proc, url = start_server(args.catalog, total // 4, None, args.workers, "fixed", cache_dir,
                             threads=args.threads)
    try:
        asyncio.run(load(url, zipf_keys(names, args.warmup, args.alpha, args.seed + 7), clients=args.clients))
        samples: dict = {"fast": False}
        peak_sampler(proc, url, samples)
        n = int(args.duration * args.rate)
        res = asyncio.run(load(url, zipf_keys(names, n, args.alpha, args.seed + 8), clients=0, rate=args.rate))
        samples["stop"] = True
        series = samples.get("series", [])
        rss = [x[2] for x in series]
        res.update(source="cache" if cache_dir else "hdfs")
        res.update(budget=total // 4, peak_held=samples.get("peak_held", 0), rss_first=rss[0] if rss else 0,
                   rss_max=max(rss) if rss else 0, rss_last=rss[-1] if rss else 0,
                   rss_first_minute_max=max((x[2] for x in series if x[0] - series[0][0] < 60), default=0),
                   rss_last_minute_max=max((x[2] for x in series if series[-1][0] - x[0] < 60), default=0),
                   rss_mib_per_minute=per_minute_max(series))
        print(json.dumps(res), flush=True)
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
