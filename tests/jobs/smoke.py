"""Runs the smoke job on a runner and reads its output back (used by the tests and by
``make quickstart`` until the real quickstart pipeline exists)."""

from __future__ import annotations

import argparse
import sys
import uuid

from modelshard.jobs.hadoop import runner_args
from tests.jobs.mr_smoke import MRSmoke

TEXT = "the quick brown fox\njumps over the lazy dog\nThe dog sleeps\n"
EXPECTED = {
    "the": 3, "dog": 2, "quick": 1, "brown": 1, "fox": 1, "jumps": 1, "over": 1, "lazy": 1,
    "sleeps": 1,
}


def run_smoke(
    runner: str, input_uri: str, output_uri: str | None = None
) -> tuple[dict[str, int], str | None]:
    """Word counts of ``input_uri`` and the YARN application id (None off YARN)."""
    args = [*runner_args(runner, catalog=input_uri, flavour="slim"), input_uri]
    if output_uri:
        args += ["--output-dir", output_uri]
    job = MRSmoke(args)
    with job.make_runner() as r:
        r.run()
        counts = dict(job.parse_output(r.cat_output()))
        app_id = None
        for interpretation in getattr(r, "_log_interpretations", []):
            app_id = interpretation.get("step", {}).get("application_id") or app_id
    return counts, app_id


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runner", default="hadoop")
    p.add_argument("--root", default="hdfs:///tmp/modelshard-smoke")
    a = p.parse_args()
    from modelshard.fs import get_fs

    fs, root = get_fs(a.root)
    base = f"{root}/{uuid.uuid4().hex}"
    fs.write_bytes(f"{base}/input.txt", TEXT.encode())
    try:
        counts, app_id = run_smoke(a.runner, fs.uri(f"{base}/input.txt"), fs.uri(f"{base}/out"))
    finally:
        fs.delete(base, recursive=True)
    print(f"application: {app_id}")
    for word, n in sorted(counts.items()):
        print(f"{word}\t{n}")
    return 0 if counts == EXPECTED else 1


if __name__ == "__main__":
    sys.exit(main())
