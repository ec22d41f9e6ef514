"""Runs an mrjob job from Python on inline, local or hadoop, and turns its outcome into a
:class:`JobResult` or a :class:`~modelshard.errors.JobError` that carries the failing
task's own error (mrjob only logs it as the "probable cause"), not just "step failed".
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from mrjob.job import MRJob
from mrjob.step import StepFailedException
from mrjob.util import to_lines

from modelshard.errors import JobError, ModelShardError, NotFoundError, UsageError
from modelshard.fs import FileInfo, FileSystem, get_fs
from modelshard.jobs.config import jobconf_args
from modelshard.jobs.hadoop import runner_args
from modelshard.jobs.runner import HadoopRunner, LocalRunner


def job_path(fs: FileSystem, path: str) -> str:
    """How mrjob wants a path: plain for the local disk (its local runners do not take
    ``file://`` output folders), a URI for HDFS."""
    return fs.uri(path) if fs.scheme != "file" else path


def data_files(uri: str) -> tuple[FileSystem, list[FileInfo]]:
    """The data files under ``uri`` (a file or a folder; names starting with ``_`` or ``.``
    skipped), checked before any job starts: present and not empty."""
    fs, path = get_fs(uri)
    if not fs.exists(path):
        raise NotFoundError(f"input {uri} does not exist; check the path")
    info = fs.stat(path)
    files = [f for f in fs.walk_files(path) if not os.path.basename(f.path).startswith(("_", "."))] \
        if info.is_dir else [info]
    if not files:
        raise UsageError(f"input {uri} holds no data files")
    for f in files:
        if f.size == 0:
            raise UsageError(f"input file {fs.uri(f.path)} is empty: every training split needs records")
    return fs, files


def input_files(uri: str) -> list[str]:
    """The data files under ``uri`` (see :func:`data_files`) as the runners want them."""
    fs, files = data_files(uri)
    return [job_path(fs, f.path) for f in files]


@contextlib.contextmanager
def task_inputs(runner: str, catalog_fs: FileSystem, docs: Sequence[Sequence[dict]]) -> Iterator[list[str]]:
    """One input file per task holding its JSON ``docs`` (a file is one split on every
    runner), written where the runner reads: the catalog's HDFS for YARN (nothing to
    upload), else a local folder; removed afterwards."""
    fs, folder = get_fs(catalog_fs.uri(f"/tmp/modelshard-jobs/{uuid.uuid4().hex}") if runner == "hadoop"
                        else tempfile.mkdtemp(prefix="modelshard-job-"))
    try:
        paths = [f"{folder}/task-{i:05d}.jsonl" for i in range(len(docs))]
        for path, lines in zip(paths, docs, strict=True):
            fs.write_bytes(path, "".join(json.dumps(d) + "\n" for d in lines).encode())
        yield [job_path(fs, path) for path in paths]
    finally:
        fs.delete(folder, recursive=True)


def _starting(chunks: Iterator[bytes], prefix: bytes) -> Iterator[bytes]:
    """The lines of ``chunks`` that start with ``prefix``, found by a regular-expression scan
    of about 1 MiB at a time rather than a Python step per line (mrjob yields a chunk a line)."""
    pattern = re.compile(rb"^" + re.escape(prefix) + rb"[^\n]*", re.MULTILINE)
    rest, block, size = b"", [], 0
    for chunk in itertools.chain(chunks, [None]):
        if chunk is not None:
            block.append(chunk)
            size += len(chunk)
            if size < 1 << 20:
                continue
        data = rest + b"".join(block)
        cut = data.rfind(b"\n") + 1 if chunk is not None else len(data)
        yield from (m.group(0) for m in pattern.finditer(data, 0, cut))
        rest, block, size = data[cut:], [], 0


@dataclass
class JobResult:
    output: list[tuple[object, object]]
    counters: dict[str, dict[str, int]]
    application_id: str | None = None
    tracking_url: str | None = None
    log: list[str] = field(default_factory=list)


class _Collector(logging.Handler):
    """Keeps mrjob's log lines: the application id, tracking URL and probable cause."""

    def __init__(self, echo: Callable[[str], object] | None) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.echo = echo

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        # The probable cause is not echoed: the JobError carries its gist on one line.
        if self.echo and re.search(r"Submitted application|url to track|map \d+% reduce", line):
            self.echo(line.strip())

    def find(self, pattern: str) -> str | None:
        for line in self.lines:
            if m := re.search(pattern, line):
                return m.group(1)
        return None

    def cause(self) -> str | None:
        for i, line in enumerate(self.lines):
            if "Probable cause of failure" in line:
                text = "\n".join(self.lines[i:]).split("Probable cause of failure:", 1)[1]
                # mrjob prints the task's traceback; its last exception line and the lines
                # of its message up to the blank line after it are the error itself.
                lines = [ln.strip() for ln in text.splitlines()]
                starts = [j for j, ln in enumerate(lines) if re.match(r"[\w.]+(Error|Exception)\b", ln)]
                if not starts:
                    return " ".join(ln for ln in lines if ln)[:500]
                end = lines.index("", starts[-1]) if "" in lines[starts[-1]:] else len(lines)
                return " ".join(lines[starts[-1]:end])[:2000]
        return None


def run_job(
    job_class: type[MRJob],
    *,
    runner: str,
    inputs: Sequence[str],
    output_dir: str | None,
    jobconf: dict[str, str],
    catalog: str,
    flavour: str = "full",
    python_archive: str | None = None,
    mrjob_conf: bool = True,
    overrides: dict[str, str] | None = None,
    echo: Callable[[str], object] | None = None,
    keep_prefix: bytes | None = None,
) -> JobResult:
    """Run ``job_class`` and return its parsed output and counters.

    ``jobconf`` is the rendered job XML; ``overrides`` are the user's ``-D key=value``.
    ``catalog``, ``flavour`` and ``python_archive`` choose the tasks' environment on YARN
    (see :func:`~modelshard.jobs.hadoop.runner_args`); ``mrjob_conf=False`` ignores the site
    ``mrjob.conf`` ($MRJOB_CONF, ~/.mrjob.conf, /etc/mrjob.conf).
    ``echo`` receives progress lines (application id, tracking URL, map/reduce progress).
    ``keep_prefix``: parse only the output lines that start with it (a large output is not
    decoded whole).
    """
    args = [*runner_args(runner, catalog=catalog, flavour=flavour, python_archive=python_archive, echo=echo),
            *([] if mrjob_conf else ["--no-conf"]), *jobconf_args(jobconf, overrides),
            # mrjob keeps a failed job's scratch copies of its input by default (a copy of a
            # local runner's input per failure); the error is reported from the task logs.
            "--cleanup-on-failure", "TMP"]
    if output_dir:
        args += ["--output-dir", output_dir]
    job = job_class([*args, *inputs])
    collector = _Collector(echo)
    log = logging.getLogger("mrjob")
    old_level = log.level
    log.addHandler(collector)
    log.setLevel(logging.INFO)
    try:
        # mrjob has no option for a runner class of one's own: build it as make_runner() does.
        runner_class = {"hadoop": HadoopRunner, "local": LocalRunner}.get(runner)
        runner_of = (lambda: runner_class(**job._runner_kwargs())) if runner_class else job.make_runner
        with runner_of() as r:
            r.run()
            read = job.output_protocol().read
            lines = to_lines(r.cat_output()) if keep_prefix is None else _starting(r.cat_output(), keep_prefix)
            output = [read(line) for line in lines]
            counters: dict[str, dict[str, int]] = {}
            for step in r.counters():
                for group, names in step.items():
                    for name, n in names.items():
                        counters.setdefault(group, {})[name] = counters.get(group, {}).get(name, 0) + n
    except StepFailedException as e:
        app = collector.find(r"(application_\d+_\d+)")
        cause = (isinstance(r, HadoopRunner) and app and r.task_error(app)) or collector.cause()
        name = job_class.__name__
        raise JobError(f"{name} failed on the {runner} runner: {cause or e}"
                       + (f" (application {app})" if app else "")
                       + "; see the task logs for the full traceback") from e
    except ModelShardError:
        raise
    except Exception as e:  # the inline runner raises a task's own error, whatever it is
        raise JobError(f"{job_class.__name__} failed on the {runner} runner: {type(e).__name__}: {e}; "
                       "rerun with --debug for the traceback") from e
    finally:
        log.removeHandler(collector)
        log.setLevel(old_level)
    return JobResult(output=output, counters=counters,
                     application_id=collector.find(r"Submitted application (application_\d+_\d+)"),
                     tracking_url=collector.find(r"url to track the job: (\S+)"), log=collector.lines)
