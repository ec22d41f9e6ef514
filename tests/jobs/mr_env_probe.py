"""Reports, from inside a task, what it runs with: the shipped interpreter and code, the
node's own Hadoop, its host, and whether any of the submitter's files are visible there."""

import json
import os
import sys

from mrjob.job import MRJob


class MREnvProbe(MRJob):
    def mapper(self, _, line):
        import numpy
        import pydoop.hdfs
        import torch

        import modelshard

        probe = json.loads(line)
        fs = pydoop.hdfs.hdfs("default", 0)
        try:
            size = fs.get_path_info(probe["hdfs_file"])["size"]
        finally:
            fs.close()
        yield "probe", {
            "versions": {"numpy": numpy.__version__, "torch": torch.__version__.split("+")[0],
                         "modelshard": modelshard.__version__},
            "stat_size": size,
            "executable": os.path.realpath(sys.executable),
            "modelshard": os.path.realpath(modelshard.__file__),
            "hadoop_home": os.environ.get("HADOOP_HOME"),
            "host": os.environ.get("NM_HOST"),
            "visible": {p: os.path.exists(p) for p in probe["submitter_paths"]},
        }


if __name__ == "__main__":
    MREnvProbe.run()
