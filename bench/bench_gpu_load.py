"""Loading straight into GPU memory: modelshard's lazy handle (load_state_dict, then one
copy per tensor to the device) vs ``safetensors.torch.load_file(..., device="cuda")`` of
the same safetensors files, from a local catalog with a warm page cache. Medians of
several interleaved runs.

    python bench/bench_gpu_load.py --size-mb 2048 --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

import modelshard


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=2048)
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    n = max(1, a.size_mb // 32)
    tensors = {f"layer{i}.weight": rng.standard_normal((2048, 4096), dtype=np.float32) for i in range(n)}
    with tempfile.TemporaryDirectory() as tmp:
        cat = str(Path(tmp) / "catalog")
        modelshard.push(tensors, "m", catalog=cat)
        files = sorted(Path(modelshard.pull("m", str(Path(tmp) / "hf"), catalog=cat).removeprefix("file://"))
                       .glob("*.safetensors"))
        del tensors
        ours, base = [], []
        for _ in range(a.runs):
            torch.cuda.synchronize()
            t = time.perf_counter()
            with modelshard.open("m", catalog=cat, record_stats=False) as h:
                sd = {k: v.to("cuda") for k, v in h.load_state_dict(framework="torch").items()}
            torch.cuda.synchronize()
            ours.append(time.perf_counter() - t)
            del sd
            t = time.perf_counter()
            sd = {}
            for f in files:
                sd.update(load_file(str(f), device="cuda"))
            torch.cuda.synchronize()
            base.append(time.perf_counter() - t)
            del sd
            torch.cuda.empty_cache()
        gib = n * 32 / 1024
        mo, mb = statistics.median(ours), statistics.median(base)
        print(f"device: {torch.cuda.get_device_name()}  model: {gib:.2f} GiB in {len(files)} files")
        print(f"modelshard open+load_state_dict+to(cuda): {mo:.3f} s ({gib / mo:.2f} GiB/s)")
        print(f"safetensors load_file(device='cuda'):     {mb:.3f} s ({gib / mb:.2f} GiB/s)")
        print(f"ratio (safetensors time / modelshard time): {mb / mo:.2f}x  runs: {a.runs}")


if __name__ == "__main__":
    main()
