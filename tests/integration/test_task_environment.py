"""Tasks on YARN import numpy, torch, pydoop and modelshard, and pydoop reaches HDFS."""

import numpy
import torch

import modelshard
from modelshard.jobs.hadoop import runner_args
from tests.jobs.mr_env_probe import MREnvProbe


def test_tasks_import_the_project_stack(hdfs_root):
    fs, root = hdfs_root
    fs.write_bytes(f"{root}/data.bin", b"x" * 1234)
    fs.write_bytes(f"{root}/input.txt", f"{root}/data.bin\n".encode())
    job = MREnvProbe([*runner_args("hadoop"), "--no-conf", fs.uri(f"{root}/input.txt"),
                      "--output-dir", fs.uri(f"{root}/out")])
    with job.make_runner() as r:
        r.run()
        out = dict(job.parse_output(r.cat_output()))
    assert out["versions"] == {"numpy": numpy.__version__, "torch": torch.__version__.split("+")[0],
                               "modelshard": modelshard.__version__, "stat_size": 1234}
