"""A map-only job that emits each input line with the start of the split it was read from,
or fails on a line ``fail`` (the tests of modelshard's local runner)."""

from mrjob.compat import jobconf_from_env
from mrjob.job import MRJob
from mrjob.protocol import JSONProtocol, RawValueProtocol


class MRSplitProbe(MRJob):
    INPUT_PROTOCOL = RawValueProtocol
    OUTPUT_PROTOCOL = JSONProtocol

    def mapper(self, _, line):
        if line == "fail":
            raise ValueError("the probe was told to fail")
        yield int(jobconf_from_env("mapreduce.map.input.start")), line


if __name__ == "__main__":
    MRSplitProbe.run()
