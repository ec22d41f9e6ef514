"""One epoch of data-parallel training by parameter averaging.

Mappers load the current weights from the catalog, train on their input split and emit
every parameter with their example count; reducers average them weighted by count, each
reducer owning the parameters the shuffle sends it and writing them as its own shard into
the staging folder of the next version; the driver (``modelshard.jobs.training``) commits
that version. Settings come from the job XML (``templates/train_config.xml.j2``).
"""

import numpy as np
from mrjob.compat import jobconf_from_env
from mrjob.job import MRJob
from mrjob.protocol import JSONProtocol, RawValueProtocol

from modelshard.jobs import wire
from modelshard.jobs.modelio import TRUST_CODE_PROPERTY, load_model, trusts_code
from modelshard.jobs.predict import MAX_BAD_RECORD_CHARS, declared_width
from modelshard.jobs.records import BadRecord, parse_record
from modelshard.jobs.shardio import write_shard_file
from modelshard.jobs.train import average, train_split

COUNTERS = "modelshard"
# Parameter names are strings; these keys are not, so they cannot collide with one.
METRICS, SHARD, BAD = ["metrics"], ["shard"], None


def conf(name, default=None):
    return jobconf_from_env("modelshard." + name, default)


class MRTrain(MRJob):
    INPUT_PROTOCOL = RawValueProtocol
    OUTPUT_PROTOCOL = JSONProtocol

    def mapper_init(self):
        self.set_status("loading model " + conf("model"))
        self.model = load_model(conf("catalog"), conf("model"), progress=self.set_status,
                                trust_code=trusts_code(jobconf_from_env(TRUST_CODE_PROPERTY)))
        self.n_features = declared_width(self.model)
        self.fmt = conf("format", "jsonl")
        self.xs, self.ys = [], []

    def mapper(self, _, line):
        try:
            _, x, y = parse_record(line, self.fmt, n_features=self.n_features)
            if y is None:
                raise BadRecord("no label")
        except BadRecord as e:
            self.increment_counter(COUNTERS, "bad records")
            yield BAD, {"error": str(e), "record": line.rstrip("\r\n")[:MAX_BAD_RECORD_CHARS]}
            return
        self.xs.append(x)
        self.ys.append(y)

    def mapper_final(self):
        self.set_status(f"training on {len(self.xs)} records")
        x = np.stack(self.xs) if self.xs else np.zeros((0, self.n_features or 0), np.float32)
        # Each split shuffles with its own seed; the task partition number tells them apart.
        seed = int(conf("train.seed", "0")) + int(jobconf_from_env("mapreduce.task.partition", "0"))
        metrics = train_split(self.model, x, np.asarray(self.ys), epochs=int(conf("train.local_epochs", "1")),
                              lr=float(conf("train.lr")), batch_size=int(conf("train.batch_size")), seed=seed)
        self.increment_counter(COUNTERS, "records", len(self.xs))
        for name, tensor in self.model.state_dict().items():
            yield name, [len(self.xs), wire.encode(tensor.numpy())]
        yield METRICS, [metrics.loss_sum, metrics.correct, metrics.count]

    def reducer_init(self):
        self.owned = {}

    def reducer(self, key, values):
        if key == METRICS:
            yield key, [sum(v) for v in zip(*values, strict=True)]
        elif key == BAD:
            yield from ((key, v) for v in values)
        else:
            self.owned[key] = average((n, wire.decode(t)) for n, t in values)

    def reducer_final(self):
        if self.owned:
            self.set_status(f"writing {len(self.owned)} averaged parameters")
            partition = int(jobconf_from_env("mapreduce.task.partition", "0"))
            yield SHARD, write_shard_file(conf("train.staging"), f"part-{partition:05d}", self.owned)


if __name__ == "__main__":
    MRTrain.run()
