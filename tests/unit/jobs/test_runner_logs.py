"""Where the Hadoop runner finds a failed task's error on a cluster of several hosts."""

import os

from mrjob.logs.task import _ls_task_logs

from modelshard.jobs.runner import HadoopRunner, python_error

APP = "application_1_0001"
STDERR = """+ env/bin/python mr_train.py --step-num=0 --mapper
Traceback (most recent call last):
  File "mr_train.py", line 64, in <module>
    MRTrain.run()
  File "modelshard/jobs/train/task.py", line 9, in check
    raise ValueError("training split is empty:\\n  no valid record")
ValueError: training split is empty:
  no valid record
log4j:WARN No appenders could be found for logger (org.apache.hadoop.mapred.MapTask).
"""


def two_nodes(tmp_path, failed_stderr=STDERR):
    """node1 ran the ApplicationMaster (its container 000001), node2 the failed map task."""
    for node, container, text in (("node1", "01_000001", "log4j:WARN No appenders\n"),
                                  ("node2", "01_000002", failed_stderr)):
        logs = tmp_path / node / "userlogs" / APP / f"container_1_0001_{container}"
        logs.mkdir(parents=True)
        (logs / "syslog").write_text("INFO started\n")
        (logs / "stderr").write_text(text)
    return HadoopRunner(conf_paths=[], hadoop_bin=["true"],
                        hadoop_log_dirs=[str(tmp_path / "node1"), str(tmp_path / "node2")])


def test_mrjob_lists_a_task_log_on_another_host_than_the_application_master(tmp_path):
    runner = two_nodes(tmp_path)
    found = {m["path"] for m in _ls_task_logs(runner.fs, runner._stream_task_log_dirs(APP), application_id=APP)}
    assert any("/node2/" in p and p.endswith("/stderr") for p in found), found


def test_the_task_error_is_the_python_exception_of_the_latest_failed_container(tmp_path):
    runner = two_nodes(tmp_path)
    assert runner.task_error(APP) == "ValueError: training split is empty: no valid record"
    older = tmp_path / "node1" / "userlogs" / APP / "container_1_0001_01_000003"
    older.mkdir()
    (older / "stderr").write_text("Traceback (most recent call last):\n  File x\nKeyError: 'old'\n")
    os.utime(older / "stderr", (1, 1))
    assert runner.task_error(APP).startswith("ValueError")  # the most recent failure wins
    assert runner.task_error("application_1_0002") is None


def test_python_error_of_stderr_without_a_traceback_is_none():
    assert python_error("log4j:WARN x\njava.lang.RuntimeException: boom\n") is None
    assert python_error("Traceback (most recent call last):\n  File a\nKeyboardInterrupt\n") == "KeyboardInterrupt"
