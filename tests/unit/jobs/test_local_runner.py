"""modelshard's local runner (modelshard.jobs.runner.LocalRunner): one map task per core,
the splits mrjob's own splitter makes for that size, every line once; a failed task fails
the job; only the output lines asked for are parsed."""

from __future__ import annotations

import os
import tempfile

import pytest
from mrjob.sim import _split_records

from modelshard.errors import JobError
from modelshard.jobs.launch import _starting, run_job
from tests.jobs.mr_split_probe import MRSplitProbe


def probe(tmp_path, text: str) -> dict[int, list[str]]:
    src = tmp_path / "in.txt"
    src.write_text(text)
    job = run_job(MRSplitProbe, runner="local", inputs=[str(src)], output_dir=None, jobconf={},
                  catalog=str(tmp_path))
    by_split: dict[int, list[str]] = {}
    for start, line in job.output:
        by_split.setdefault(start, []).append(line)
    return by_split


def test_one_task_per_core_with_the_splits_mrjob_makes(tmp_path):
    lines = ["x" * (i % 97) + str(i) for i in range(20_000)]  # lines of many lengths
    by_split = probe(tmp_path, "\n".join(lines) + "\n")
    assert len(by_split) == os.cpu_count()
    split_size = -(-(tmp_path / "in.txt").stat().st_size // os.cpu_count())
    with open(tmp_path / "in.txt", "rb") as f:
        expected = [[ln.decode().rstrip("\n") for ln in group] for group in _split_records(f, split_size)]
    assert [by_split[s] for s in sorted(by_split)] == expected


def test_a_last_line_without_newline_and_an_empty_input(tmp_path):
    by_split = probe(tmp_path, "a\nb\nc")
    assert [ln for s in sorted(by_split) for ln in by_split[s]] == ["a", "b", "c"]
    assert probe(tmp_path, "") == {}


def test_a_failed_task_fails_the_job_with_its_error_and_leaves_no_scratch(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where mrjob puts its working copies
    with pytest.raises(JobError, match="the probe was told to fail"):
        probe(tmp_path, "ok\n" * 1000 + "fail\n" + "ok\n" * 1000)
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize("size", [1, 7, 1 << 20])
def test_only_lines_with_the_prefix_are_kept_across_chunk_boundaries(size):
    lines = [b"null\t%d" % i if i % 37 == 0 else b"%d\t1" % i for i in range(50_000)]
    data = b"\n".join(lines)  # no newline at the end
    chunks = iter(data[i:i + size] for i in range(0, len(data), size))
    assert list(_starting(chunks, b"null\t")) == [ln for ln in lines if ln.startswith(b"null\t")]
