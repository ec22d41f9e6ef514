"""Reports, from inside a task, that the project's Python stack imports there and that
pydoop reaches HDFS: the foundation's proof that tasks run with the project's environment."""

from mrjob.job import MRJob


class MREnvProbe(MRJob):
    def mapper(self, _, path):
        import numpy
        import pydoop.hdfs
        import torch

        import modelshard

        fs = pydoop.hdfs.hdfs("default", 0)
        try:
            size = fs.get_path_info(path.strip())["size"]
        finally:
            fs.close()
        yield "versions", {"numpy": numpy.__version__, "torch": torch.__version__.split("+")[0],
                           "modelshard": modelshard.__version__, "stat_size": size}


if __name__ == "__main__":
    MREnvProbe.run()
