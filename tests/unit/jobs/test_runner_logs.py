"""Where the Hadoop runner looks for a failed task's log on a cluster of several hosts."""

from mrjob.logs.task import _ls_task_logs

from modelshard.jobs.runner import HadoopRunner

APP = "application_1_0001"


def test_a_task_log_on_another_host_than_the_application_master_is_found(tmp_path):
    # node1 ran the ApplicationMaster (its container 000001), node2 the failed map task.
    for node, container in (("node1", "01_000001"), ("node2", "01_000002")):
        logs = tmp_path / node / "userlogs" / APP / f"container_1_0001_{container}"
        logs.mkdir(parents=True)
        (logs / "syslog").write_text("INFO started\n")
        (logs / "stderr").write_text("Traceback ...\nValueError: training split is empty\n")
    runner = HadoopRunner(conf_paths=[], hadoop_bin=["true"],
                          hadoop_log_dirs=[str(tmp_path / "node1"), str(tmp_path / "node2")])
    found = {m["path"] for m in _ls_task_logs(runner.fs, runner._stream_task_log_dirs(APP), application_id=APP)}
    assert any("/node2/" in p and p.endswith("/stderr") for p in found), found
