"""Batch prediction over records on HDFS (or local files): each task opens the model once,
predicts in batches, and emits ``id -> value`` (the class, scores, top k, embedding or
tensor that ``--output`` asks for); a record that does not fit is emitted with a null id and
its reason (the driver splits them into a side output) and counted. With Parquet output the
task writes its predictions to a file of its own and emits only bad records and that file's
report (``modelshard.jobs.parquet``).

Settings come from the job XML (``templates/predict_config.xml.j2``) as jobconf.
"""

from mrjob.compat import jobconf_from_env
from mrjob.job import MRJob
from mrjob.protocol import RawValueProtocol

from modelshard.jobs.modelio import TRUST_CODE_PROPERTY, trusts_code
from modelshard.jobs.parquet import ParquetSink
from modelshard.jobs.predict.task import InputSpec, OutputSpec, open_predictor
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
        self.sink = None
        if conf("predict.output_format", "jsonl") == "parquet":
            self.sink = ParquetSink(conf("output"), kind=self.predictor.output.kind,
                                    attempt=jobconf_from_env("mapreduce.task.attempt.id"))

    def emit(self, pairs):
        return self.sink.take(pairs) if self.sink else pairs

    def mapper(self, _, line):
        yield from self.emit(self.predictor.add(line))

    def mapper_final(self):
        yield from self.emit(self.predictor.flush())
        if self.sink:
            yield self.sink.close()
        p = self.predictor
        for name, n in (("records", p.records), ("bad records", p.bad), ("batches", p.batches)):
            self.increment_counter(COUNTERS, name, n)


if __name__ == "__main__":
    MRPredict.run()
