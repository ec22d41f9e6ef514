"""Loading onto a device (issue 13), side by side in one run, runs alternating, medians.

A model of F32 and BF16 matrices with small F32 biases (``--size-mb`` in all) is pushed to a
local catalog; its shard files are plain safetensors, so every side reads the same files
from a warm page cache:

* ``--device cuda`` (a GPU machine): ``modelshard.load(device="cuda")`` vs
  ``safetensors.torch.load_file(device="cuda")`` of each shard, vs the raw pinned pipeline
  (``--threads`` threads read 8 MiB pieces of the shards into pinned buffers, each copied
  asynchronously to its place in one preallocated device buffer per shard; no checks: the
  bus-and-read limit), vs today's ``load_state_dict(framework="torch")`` then ``.to()``;
* ``--device cpu``: ``modelshard.load(device="cpu")`` vs today's
  ``load_state_dict(framework="torch")``, and the staged pipeline that accelerators take,
  with the CPU as the device (for information);
* both: ``load_into`` a module built on the meta device (``--module-mb`` of Linear layers):
  the peak host RSS it adds, in a fresh process, beside the pool (``--pool-mb``); on the CPU
  the model itself is host memory, so the figure is what it adds beyond the model.

    python bench/bench_gpu_load.py --device cuda --size-mb 4096 --runs 5   # the issue's targets
    python bench/bench_gpu_load.py --device cpu --size-mb 512 --runs 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import modelshard  # noqa: E402 - runs from a checkout without installing
from modelshard.catalog.catalog import Catalog  # noqa: E402
from modelshard.loading.device import load_state_dict_to  # noqa: E402

MiB = 1 << 20


def model(size_mb: int) -> dict[str, torch.Tensor]:
    """F32 and BF16 (2048, 4096) matrices, alternating, each with a (4096,) F32 bias."""
    g = torch.Generator().manual_seed(0)
    out, total, i = {}, 0, 0
    while total < size_mb * MiB:
        dtype = torch.float32 if i % 2 == 0 else torch.bfloat16
        out[f"layer{i}.weight"] = torch.randn(2048, 4096, generator=g).to(dtype)
        out[f"layer{i}.bias"] = torch.randn(4096, generator=g)
        total += out[f"layer{i}.weight"].nbytes + 4096 * 4
        i += 1
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    elapsed = time.perf_counter() - t
    del out
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return elapsed


def raw_pipeline(files: list[Path], device: torch.device, threads: int) -> list[torch.Tensor]:
    """The bus-and-read limit: shard files read in 8 MiB pieces into pinned buffers (two per
    thread), each copied asynchronously into one preallocated device buffer per file."""
    piece = 8 * MiB
    bufs = [torch.empty(f.stat().st_size, dtype=torch.uint8, device=device) for f in files]
    fds = [os.open(f, os.O_RDONLY) for f in files]
    jobs = [(i, off) for i, f in enumerate(files) for off in range(0, f.stat().st_size, piece)]
    local = threading.local()

    def run(job: tuple[int, int]) -> None:
        if not hasattr(local, "slots"):
            local.stream = torch.cuda.Stream(device)
            local.slots = [[torch.empty(piece, dtype=torch.uint8, pin_memory=True), None]
                           for _ in range(2)]
            local.n = 0
        slot = local.slots[local.n % 2]
        local.n += 1
        if slot[1] is not None:
            slot[1].synchronize()
        i, off = job
        n = os.preadv(fds[job[0]], [memoryview(slot[0].numpy())], off)
        with torch.cuda.stream(local.stream):
            bufs[i][off:off + n].copy_(slot[0][:n], non_blocking=True)
            slot[1] = torch.cuda.Event()
            slot[1].record(local.stream)

    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, jobs))
        torch.cuda.synchronize(device)
    finally:
        for fd in fds:
            os.close(fd)
    return bufs


RSS_CHILD = """
import sys, torch
sys.path.insert(0, {root!r})
import modelshard
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
cat, device, pool, layers, way = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
build = lambda: torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(layers)])
# Warm up all but the pool (torch's pinned allocator would keep a pool freed before and
# hide it): imports, the manifest, CUDA's context and its pinned allocator.
import modelshard.loading.device
modelshard.open("mod", catalog=cat, record_stats=False).close()
if device != "cpu":
    torch.empty(1, device=device)
    torch.empty(1, pin_memory=True)
with torch.device("meta"):
    net = build()
on_host = sum(t.nbytes for t in net.state_dict().values()) if device == "cpu" else 0
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
before = rss("VmRSS")
if way == "ours":
    modelshard.load_into(net, "mod", catalog=cat, device=device, pool_bytes=pool)
else:  # today: the state dict on the host (memory-mapped), then onto the device
    sd = modelshard.load("mod", catalog=cat, framework="torch", record_stats=False)
    net.load_state_dict({{k: v.to(device) for k, v in sd.items()}}, assign=True)
print(rss("VmHWM") - before - on_host)
"""


def rss_added(cat: str, device: torch.device, pool: int, layers: int, way: str) -> int:
    script = RSS_CHILD.format(root=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", script, cat, str(device), str(pool),
                          str(layers), way], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size-mb", type=int, default=4096)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=16, help="the raw pipeline's threads")
    p.add_argument("--workers", type=int, default=None, help="modelshard's (default: up to 16)")
    p.add_argument("--pool-mb", type=int, default=256)
    p.add_argument("--module-mb", type=int, default=512, help="load_into's meta module")
    a = p.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
    pool = a.pool_mb * MiB
    with tempfile.TemporaryDirectory() as tmp:
        cat = str(Path(tmp) / "catalog")
        m = modelshard.push(model(a.size_mb), "m", catalog=cat)
        vdir = Path(Catalog(cat).version_dir("m", m.version).removeprefix("file://"))
        files = [vdir / s.path for s in m.shards]
        gib = sum(t.nbytes for t in m.tensors.values()) / (1 << 30)

        def ours() -> object:
            return modelshard.load("m", catalog=cat, device=device, pool_bytes=pool,
                                   record_stats=False, **({"workers": a.workers}
                                                          if a.workers else {}))

        def today() -> object:
            sd = modelshard.load("m", catalog=cat, framework="torch", record_stats=False)
            return sd if device.type == "cpu" else {k: v.to(device) for k, v in sd.items()}

        def staged() -> object:
            with modelshard.open("m", catalog=cat, record_stats=False) as h:
                return load_state_dict_to(h, [(n, None) for n in h.names()], device=device,
                                          pool_bytes=pool, workers=a.workers)

        def safetensors() -> object:
            out = {}
            for f in files:
                out.update(load_file(str(f), device=str(device)))
            return out

        sides: dict[str, Callable[[], object]] = {"modelshard load(device)": ours,
                                                  "today: load_state_dict(torch)"
                                                  + (".to(device)" if device.type != "cpu"
                                                     else ""): today}
        if device.type == "cuda":
            sides["safetensors load_file(device)"] = safetensors
            sides[f"raw pinned pipeline ({a.threads} threads)"] = lambda: raw_pipeline(
                files, device, a.threads)
        else:
            sides["staged pipeline, CPU as the device"] = staged
        times: dict[str, list[float]] = {k: [] for k in sides}
        for fn in sides.values():  # warm the page cache and the allocators
            timed(fn, device)
        for _ in range(a.runs):
            for k, fn in sides.items():
                times[k].append(timed(fn, device))
        med = {k: statistics.median(v) for k, v in times.items()}
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(f"device: {device} ({name}); {os.cpu_count()} cores; load average "
              f"{os.getloadavg()[0]:.1f}; {gib:.2f} GiB in {len(files)} shard files; runs "
              f"{a.runs}, alternating; median seconds")
        base = med["modelshard load(device)"]
        for k, t in med.items():
            print(f"  {k:42s} {t:7.3f} s  {gib / t:6.2f} GiB/s  x{t / base:5.2f} "
                  "(its time / modelshard's)")

        layers = max(1, round(a.module_mb * MiB / (4096 * 4097 * 4)))
        with torch.device("meta"):
            net = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096) for _ in range(layers)])
        modelshard.push({k: torch.zeros(v.shape) for k, v in net.state_dict().items()}, "mod",
                        catalog=cat)
        added = rss_added(cat, device, pool, layers, "ours")
        today_added = rss_added(cat, device, pool, layers, "today")
        beyond = " beyond the model" if device.type == "cpu" else ""
        print(f"load_into a meta module of {layers * 4096 * 4097 * 4 / MiB:.0f} MiB on {device}: "
              f"peak host RSS added{beyond} {added / MiB:.1f} MiB; pool {a.pool_mb} MiB "
              f"({added / pool:.2f}x the pool); today (load, then module.load_state_dict("
              f"..., assign=True)): {today_added / MiB:.1f} MiB")
        print("targets (issue 13):")
        if device.type == "cuda":
            st = med["safetensors load_file(device)"] / base
            raw = med[f"raw pinned pipeline ({a.threads} threads)"] / base
            print(f"  load(device) >= 5x safetensors: {st:.2f}x {'met' if st >= 5 else 'NOT met'}")
            print(f"  load(device) >= 0.9x the raw pinned pipeline: {raw:.2f}x "
                  f"{'met' if raw >= 0.9 else 'NOT met'}")
        else:
            r = med["today: load_state_dict(torch)"] / base
            print(f"  load(device='cpu') no slower than today: {r:.2f}x "
                  f"{'met' if r >= 1 else 'NOT met (within the run-to-run spread?)'}")
        print(f"  load_into's peak host RSS added <= pool + 10%: {added / pool:.2f}x "
              f"{'met' if added <= 1.1 * pool else 'NOT met'}")


if __name__ == "__main__":
    main()
