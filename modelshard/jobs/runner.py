"""mrjob's Hadoop and local runners, with what costs most around a job done in this process.

mrjob's Hadoop runner runs one ``hadoop`` command, a JVM start of 1.5-3 s, for ``hadoop
version`` and for every mkdir, put, ls, cat and rm around a job: most of a small job's fixed
cost. :class:`HadoopRunner` makes them through modelshard's libhdfs client, whose JVM the
driver has started already to read the catalog; only ``hadoop jar``, the submission itself,
still starts one. Paths on other filesystems, or with glob characters, go mrjob's usual way.

mrjob's local runner splits a large input into two tasks per core, each paying the task's
start-up (Python, torch, the model: 2-3 s), copies it line by line in Python (1 s per 500,000
lines), and starts each task from a ``multiprocessing`` worker: a fork of this process (which
can hang on a lock held by another thread, such as libhdfs's JVM) or, from a forkserver, a new
interpreter that imports the caller's main module again (2-3 s for a script that imports
torch). :class:`LocalRunner` gives one task per core, copies byte ranges, and starts the task
processes from threads.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from mrjob.cat import decompress, is_compressed
from mrjob.fs.composite import CompositeFilesystem
from mrjob.fs.hadoop import HadoopFilesystem
from mrjob.fs.local import LocalFilesystem
from mrjob.hadoop import HadoopJobRunner
from mrjob.local import LocalMRJobRunner

from modelshard.errors import ModelShardError
from modelshard.fs import FileSystem, get_fs
from modelshard.fs.hdfs import hadoop_home

_GLOB = re.compile(r"[*?\[{]")
_COMMON_JAR = re.compile(r"hadoop-common-(\d+\.\d+\.\d+[\w.-]*?)\.jar$")
_CHUNK = 1 << 20


@contextlib.contextmanager
def _as_ioerror() -> Iterator[None]:
    # mrjob's log search catches IOError; modelshard's message says what happened.
    try:
        yield
    except ModelShardError as e:
        raise OSError(str(e)) from e


class InProcessHdfs(HadoopFilesystem):
    """mrjob's ``hadoop`` filesystem, answering ``hdfs://`` paths with libhdfs."""

    def _fs(self, path: str) -> tuple[FileSystem, str] | None:
        if urlsplit(path).scheme != "hdfs" or _GLOB.search(path):
            return None
        return get_fs(path)

    def get_hadoop_version(self) -> str:
        """The version in the name of the client's hadoop-common jar; else ``hadoop version``."""
        if not self._hadoop_version and (home := hadoop_home()) is not None:
            for jar in sorted(home.glob("**/hadoop-common-*.jar")):
                if (m := _COMMON_JAR.search(jar.name)) and not m.group(1).endswith("tests"):
                    self._hadoop_version = m.group(1)
                    break
        return self._hadoop_version or super().get_hadoop_version()

    def du(self, path_glob: str) -> int:
        if not (found := self._fs(path_glob)):
            return super().du(path_glob)
        fs, path = found
        with _as_ioerror():
            if not fs.exists(path):
                return 0
            return sum(f.size for f in fs.walk_files(path)) if fs.stat(path).is_dir else fs.stat(path).size

    def ls(self, path_glob: str) -> Iterator[str]:
        if not (found := self._fs(path_glob)):
            yield from super().ls(path_glob)
            return
        fs, path = found
        with _as_ioerror():
            if not fs.exists(path):
                return
            files = list(fs.walk_files(path)) if fs.stat(path).is_dir else [fs.stat(path)]
        # In the form asked for, as `hadoop fs -ls` answers: mrjob cuts the folder's URI off
        # the front of each to find the part files (hdfs:///a is not hdfs://host:port/a).
        prefix = "{0.scheme}://{0.netloc}".format(urlsplit(path_glob))
        for f in files:
            yield prefix + f.path

    def _cat_file(self, path: str) -> Iterator[bytes]:
        if not (found := self._fs(path)):
            yield from super()._cat_file(path)
            return
        fs, p = found
        with _as_ioerror(), fs.open_read(p) as f:
            yield from decompress(f, path, _CHUNK)

    def mkdir(self, path: str) -> None:
        if not (found := self._fs(path)):
            return super().mkdir(path)
        with _as_ioerror():
            found[0].mkdirs(found[1])

    def exists(self, path_glob: str) -> bool:
        if not (found := self._fs(path_glob)):
            return super().exists(path_glob)
        with _as_ioerror():
            return found[0].exists(found[1])

    def put(self, src: str, path: str) -> None:
        if not (found := self._fs(path)) or path.endswith("/"):
            return super().put(src, path)
        fs, p = found
        with _as_ioerror(), open(src, "rb") as source, fs.open_write(p) as target:
            shutil.copyfileobj(source, target, _CHUNK)

    def rm(self, path_glob: str) -> None:
        if not (found := self._fs(path_glob)):
            return super().rm(path_glob)
        with _as_ioerror():
            found[0].delete(found[1], recursive=True)

    def touchz(self, path: str) -> None:
        if not (found := self._fs(path)):
            return super().touchz(path)
        fs, p = found
        with _as_ioerror():
            if fs.exists(p) and fs.stat(p).size:
                raise OSError(f"{path}: a non-empty file already exists")
            fs.write_bytes(p, b"")


class HadoopRunner(HadoopJobRunner):
    """:class:`mrjob.hadoop.HadoopJobRunner` whose filesystem is :class:`InProcessHdfs`."""

    @property
    def fs(self) -> CompositeFilesystem:
        if self._fs is None:
            self._fs = CompositeFilesystem()
            self._fs.add_fs("hadoop", InProcessHdfs(self._opts["hadoop_bin"] or None))
            self._fs.add_fs("local", LocalFilesystem())
        return self._fs

    def _stream_task_log_dirs(self, application_id=None, output_dir=None):
        # mrjob offers each log dir as a list of its own and stops at the first list with any
        # log of the application: on several NodeManagers that is the ApplicationMaster's host,
        # and a failed task's stderr on the other host is never read. Offer them as one list.
        dirs = [d for ds in super()._stream_task_log_dirs(application_id, output_dir) for d in ds]
        if dirs:
            yield dirs

    def task_error(self, application_id: str) -> str | None:
        """The Python error of the application's most recently failed task, from the stderr
        of its containers in the NodeManagers' local log folders. mrjob ties a failed attempt
        to its container only through job history files in those folders, which a cluster
        with a JobHistory server keeps on HDFS instead; then it reports the Java wrapper's
        "subprocess failed with code 1" and not the task's own error."""
        errors = []
        for log_dir in self._hadoop_log_dirs():
            if urlsplit(log_dir).scheme not in ("", "file"):
                continue
            for stderr in Path(urlsplit(log_dir).path, "userlogs", application_id).glob("container_*/stderr"):
                with contextlib.suppress(OSError):
                    if error := python_error(stderr.read_text(errors="replace")):
                        errors.append((stderr.stat().st_mtime, error))
        return max(errors)[1] if errors else None


class LocalRunner(LocalMRJobRunner):
    """:class:`mrjob.local.LocalMRJobRunner` with one map task per core and input split by
    byte ranges at line ends, where mrjob splits line by line (the same splits: each ends
    with the line that reaches the split size). Compressed inputs and input manifests are
    split mrjob's way."""

    def _run_multiple(self, funcs, num_processes=None):
        # Each func waits on a task's process: threads suffice, and fork nothing. After a
        # failed task, the tasks not started yet are not started.
        with ThreadPoolExecutor(self._opts["num_cores"] or os.cpu_count()) as pool:
            tasks = [pool.submit(f) for f in funcs]
            try:
                for task in tasks:
                    task.result()
            except BaseException:
                for task in tasks:
                    task.cancel()
                raise

    def _pick_mapper_split_size(self, input_paths, step_num):
        size = sum(os.path.getsize(p) for p in input_paths if not is_compressed(p))
        return max(-(-size // self._num_mappers(step_num)), 1)

    def _split_mapper_input(self, input_paths, step_num):
        input_paths = list(input_paths)
        if (step_num == 0 and self._uses_input_manifest()) or any(map(is_compressed, input_paths)):
            return super()._split_mapper_input(input_paths, step_num)
        split_size = self._pick_mapper_split_size(input_paths, step_num)
        dests = self._yield_split_fileobjs("mapper", step_num)
        splits = []
        for path in input_paths:
            with open(path, "rb") as src:
                size = os.fstat(src.fileno()).st_size
                start = 0
                while True:  # an empty file is one empty split, as in mrjob
                    end = min(start + split_size, size)
                    if end < size:
                        src.seek(end - 1)
                        src.readline()
                        end = src.tell()
                    src.seek(start)
                    with next(dests) as dest:
                        _copy(src, dest, end - start)
                    splits.append({"file": path, "start": start, "length": end - start})
                    start = end
                    if start >= size:
                        break
        return splits


def _copy(src, dest, n: int) -> None:
    while n > 0:
        chunk = src.read(min(n, _CHUNK))  # larger reads cost more here: new pages
        if not chunk:
            raise OSError(f"{src.name} changed while it was split for the map tasks")
        dest.write(chunk)
        n -= len(chunk)


def python_error(text: str) -> str | None:
    """The exception of the last Python traceback in ``text`` (a task's stderr): its line and
    the lines of its message up to a blank or log line, joined; None without a traceback."""
    lines = text.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last):")]
    if not starts:
        return None
    error = []
    for ln in lines[starts[-1] + 1:]:
        if error and (not ln.strip() or re.match(r"log4j:|\d{4}-\d\d-\d\d ", ln)):
            break
        if error or not ln.startswith(" "):  # frames are indented; the exception is not
            error.append(ln.strip())
    return " ".join(error)[:2000] or None
