"""The quickstart pipeline (train, predict, reshard) on the real YARN against an HDFS
catalog, and a failing job that reports its task's own error."""

import re

import pytest

from modelshard import api
from modelshard.errors import JobError
from modelshard.jobs.train.driver import train
from modelshard.quickstart import SPEC, TEST_ROWS, run


def test_quickstart_pipeline_on_yarn(hdfs_root, tmp_path):
    fs, root = hdfs_root
    catalog = fs.uri(f"{root}/catalog")
    s = run(runner="hadoop", catalog=catalog, work=fs.uri(f"{root}/work"), out_dir=tmp_path, epochs=2, lr=0.1,
            batch_size=32, echo=print)
    assert s.model == "digits@3" and s.resharded == "digits@4"
    assert (s.predicted, s.bad_records) == (TEST_ROWS, 1)
    assert s.predict_accuracy == pytest.approx(s.test_accuracy_averaged)
    versions = api.ls("digits", catalog=catalog)
    assert [v.version for v in versions] == ["1", "2", "3", "4"]
    assert api.show("digits@4", catalog=catalog).manifest.tensors["0.weight"].dtype.name == "BF16"
    api.verify("digits@4", catalog=catalog)
    assert (tmp_path / "curves.png").exists()


def test_failed_task_error_is_reported(hdfs_root):
    fs, root = hdfs_root
    fs.write_bytes(f"{root}/data/part-0.jsonl", b"garbage\n")  # a split without one valid record
    with pytest.raises(JobError, match="training split is empty") as e:
        train("m", fs.uri(f"{root}/data"), epochs=1, catalog=fs.uri(f"{root}/catalog"), init=SPEC,
              runner="hadoop", overrides={"mapreduce.map.maxattempts": "1"})
    assert re.search(r"application_\d+_\d+", str(e.value))
    assert [v.version for v in api.ls("m", catalog=fs.uri(f"{root}/catalog"))] == ["1"]
