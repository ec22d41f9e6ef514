"""bin/modelshard-reshard on an edge node: finds Hadoop, prints the YARN application id and
tracking URL, exits with the job's status."""

import subprocess
from pathlib import Path

import numpy as np

from modelshard import api

BIN = Path(__file__).resolve().parents[2] / "bin"


def test_reshard_wrapper_reports_the_application(hdfs_root):
    fs, root = hdfs_root
    catalog = fs.uri(f"{root}/catalog")
    api.push({"w": np.ones((600, 600), np.float32)}, "m", catalog=catalog)
    out = subprocess.run([BIN / "modelshard-reshard", "m", "--shard-size", "1M", "--catalog", catalog],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "Submitted application application_" in out.stderr
    assert "url to track the job: http://" in out.stderr
    assert "resharded m into m@2: 2 shards" in out.stdout
    bad = subprocess.run([BIN / "modelshard-reshard", "nosuch", "--shards", "2", "--catalog", catalog],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "nosuch" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
