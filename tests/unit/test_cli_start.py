"""The store's commands start without torch: ``ls``, ``show``, ``pull`` and ``push`` of
safetensors import only what they use (torch alone took 2-13 s to import here, ml_dtypes
0.6-0.9 s: F32 tensors need neither)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import sys
from modelshard.cli import main
rc = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "transformers", "mrjob", "pydoop", "ml_dtypes") if m in sys.modules)
print("IMPORTED", heavy)
sys.exit(rc)
"""


def imported(*argv: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("IMPORTED"))
    return eval(line.removeprefix("IMPORTED "))  # a list literal printed by the probe


def test_store_commands_do_not_import_torch(tmp_path):
    src = tmp_path / "m.safetensors"
    save_file({"w": np.ones((4, 3), np.float32)}, str(src))
    cat = ["--catalog", str(tmp_path / "cat")]
    assert imported("push", str(src), "m", *cat) == []
    assert imported("ls", *cat) == []
    assert imported("show", "m", "--tensors", *cat) == []
    assert imported("pull", "m", str(tmp_path / "out"), *cat) == []
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()

