"""Batch prediction over records on HDFS (or local files): each task opens the model once,
predicts in batches, and emits ``id -> predicted class``; a malformed record is emitted
with a null id and its reason (the driver splits them into a side output) and counted.

Settings come from the job XML (``templates/predict_config.xml.j2``) as jobconf.
"""

from mrjob.compat import jobconf_from_env
from mrjob.job import MRJob
from mrjob.protocol import JSONProtocol, RawValueProtocol

from modelshard.jobs.modelio import TRUST_CODE_PROPERTY, load_model, trusts_code
from modelshard.jobs.predict import Predictor

COUNTERS = "modelshard"


class MRPredict(MRJob):
    INPUT_PROTOCOL = RawValueProtocol
    OUTPUT_PROTOCOL = JSONProtocol

    def mapper_init(self):
        self.set_status("loading model " + jobconf_from_env("modelshard.model"))
        budget = jobconf_from_env("modelshard.predict.budget_bytes", "")
        model = load_model(jobconf_from_env("modelshard.catalog"), jobconf_from_env("modelshard.model"),
                           cache_dir=jobconf_from_env("modelshard.predict.cache_dir", "") or None,
                           budget_bytes=int(budget) if budget else None, record_stats=True,
                           progress=self.set_status,
                           trust_code=trusts_code(jobconf_from_env(TRUST_CODE_PROPERTY)),
                           counter=lambda name, n: self.increment_counter(COUNTERS, name, n))
        self.predictor = Predictor(model, fmt=jobconf_from_env("modelshard.format", "jsonl"),
                                   batch_size=int(jobconf_from_env("modelshard.predict.batch_size", "1024")))

    def mapper(self, _, line):
        yield from self.predictor.add(line)

    def mapper_final(self):
        yield from self.predictor.flush()
        p = self.predictor
        for name, n in (("records", p.records), ("bad records", p.bad), ("batches", p.batches)):
            self.increment_counter(COUNTERS, name, n)


if __name__ == "__main__":
    MRPredict.run()
