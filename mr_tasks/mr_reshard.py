"""Resharding: each input line is the plan of one new shard; the mapper reads exactly the
rows that shard needs from the source version (each chunk checked in the bytes served),
casts them if asked, writes the shard into the staged version and reports it. The driver
(:mod:`modelshard.jobs.reshard.driver`) commits the new version. Map-only.
"""

from mrjob.compat import jobconf_from_env
from mrjob.job import MRJob
from mrjob.protocol import JSONProtocol, JSONValueProtocol

from modelshard.jobs.reshard.task import write_planned_shard
from modelshard.loading import open as open_model


class MRReshard(MRJob):
    INPUT_PROTOCOL = JSONValueProtocol
    OUTPUT_PROTOCOL = JSONProtocol

    def mapper_init(self):
        self.source = open_model(jobconf_from_env("modelshard.model"), catalog=jobconf_from_env("modelshard.catalog"),
                                 record_stats=False)

    def mapper(self, _, plan):
        self.set_status(f"writing {plan['filename']}")
        yield plan["filename"], write_planned_shard(self.source, jobconf_from_env("modelshard.reshard.staging"), plan)
        self.increment_counter("modelshard", "shards written")

    def mapper_final(self):
        self.source.close()


if __name__ == "__main__":
    MRReshard.run()
