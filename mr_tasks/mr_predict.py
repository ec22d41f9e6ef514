"""Batch prediction over records on HDFS (or local files): each task opens the model once,
predicts in batches, and emits ``id -> value`` (the class, scores, top k, embedding or
tensor that ``--output`` asks for); a record that does not fit is emitted with a null id and
its reason (the driver splits them into a side output) and counted.

Settings come from the job XML (``templates/predict_config.xml.j2``) as jobconf.
"""

from mrjob.compat import jobconf_from_env
from mrjob.job import MRJob
from mrjob.protocol import RawValueProtocol

from modelshard.jobs.modelio import TRUST_CODE_PROPERTY, trusts_code
from modelshard.jobs.predict import InputSpec, OutputSpec, open_predictor
from modelshard.jobs.wire import OrjsonProtocol

COUNTERS = "modelshard"


def conf(name, default=None):
    return jobconf_from_env("modelshard." + name, default)


class MRPredict(MRJob):
    INPUT_PROTOCOL = RawValueProtocol
    OUTPUT_PROTOCOL = OrjsonProtocol

    def mapper_init(self):
        self.set_status("loading model " + conf("model"))
        budget = conf("predict.budget_bytes", "")
        self.predictor = open_predictor(
            conf("catalog"), conf("model"), fmt=conf("format", "jsonl"),
            batch_size=int(conf("predict.batch_size", "1024")),
            inputs=InputSpec.parse(conf("predict.input", "features")),
            output=OutputSpec.parse(conf("predict.output", "class")),
            cache_dir=conf("predict.cache_dir", "") or None, budget_bytes=int(budget) if budget else None,
            trust_code=trusts_code(jobconf_from_env(TRUST_CODE_PROPERTY)), record_stats=True,
            threads=int(conf("predict.threads", "") or 0),
            progress=self.set_status, counter=lambda name, n: self.increment_counter(COUNTERS, name, n))

    def mapper(self, _, line):
        yield from self.predictor.add(line)

    def mapper_final(self):
        yield from self.predictor.flush()
        p = self.predictor
        for name, n in (("records", p.records), ("bad records", p.bad), ("batches", p.batches)):
            self.increment_counter(COUNTERS, name, n)


if __name__ == "__main__":
    MRPredict.run()
