"""One epoch of data-parallel training by parameter averaging; no weights in the shuffle.

Each map task's input line names one split (a data file); the mapper loads the current
weights and the splits' averaged SGD momentum, trains on the split's records in batches as
it reads them, writes its parameters and momentum as one piece per planned shard into the
epoch's staging folder and emits only a small report per piece. The reducer of each
planned shard averages the pieces by streaming, applies the outer optimizer and writes
the shard of the next version; the driver
(``modelshard.jobs.train.driver``) commits it. See :mod:`modelshard.jobs.train.reduce_task`. Settings
come from the job XML (``templates/train_config.xml.j2``). Reducers never import torch.
"""

import resource

from mrjob.compat import jobconf_from_env
from mrjob.job import MRJob
from mrjob.protocol import JSONProtocol, JSONValueProtocol

from modelshard.fs import get_fs
from modelshard.jobs.modelio import TRUST_CODE_PROPERTY, trusts_code
from modelshard.jobs.train.reduce_task import (
    INNER,
    Outer,
    reduce_shard,
    shard_index,
    shard_key,
    train_plans,
    write_pieces,
)
from modelshard.loading import open as open_model

COUNTERS = "modelshard"
# Shard keys are strings; these keys are not, so they cannot collide with one.
METRICS, SHARD, PEAK_RSS, BAD = ["metrics"], ["shard"], ["peak RSS MiB"], None


def conf(name, default=None):
    return jobconf_from_env("modelshard." + name, default)


def outer():
    return Outer(lr=float(conf("train.outer_lr")), momentum=float(conf("train.outer_momentum")))


def peak_rss_mib() -> int:
    """This task's peak resident memory (Linux reports KiB), the libhdfs JVM in it included."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


class MRTrain(MRJob):
    INPUT_PROTOCOL = JSONValueProtocol
    OUTPUT_PROTOCOL = JSONProtocol

    def mapper_init(self):
        from modelshard.jobs.modelio import load_model

        self.set_status("loading model " + conf("model"))
        self.model = load_model(conf("catalog"), conf("model"), progress=self.set_status,
                                trust_code=trusts_code(jobconf_from_env(TRUST_CODE_PROPERTY)))
        with open_model(conf("model"), catalog=conf("catalog"), record_stats=False) as parent:
            self.plans = train_plans(parent.manifest, outer=outer())
            inner = [n for n in parent.names() if n.startswith(INNER)]
            self.momentum = {n.removeprefix(INNER): v for n, v in parent.load_state_dict(inner).items()}

    def mapper(self, _, task):
        from modelshard.jobs.predict.task import MAX_BAD_RECORD_CHARS, declared_width
        from modelshard.jobs.train.task import split_batch, train_file

        split = int(task["split"])
        fs, path = get_fs(task["file"])

        def lines():
            with fs.open_read(path) as f:
                for raw in f:
                    yield raw.decode("utf-8", "replace")

        self.set_status(f"training on split {split}: {task['file']}")
        momentum = dict(self.momentum)  # in: the version's; out: this split's
        run = train_file(self.model, lines, fmt=conf("format", "jsonl"), n_features=declared_width(self.model),
                         lr=float(conf("train.lr")),
                         batch_size=split_batch(int(conf("train.batch_size")), int(conf("train.splits"))),
                         seed=int(conf("train.seed", "0")) + split, epochs=int(conf("train.local_epochs", "1")),
                         buffer_bytes=int(conf("train.shuffle_buffer_bytes")), momentum=momentum)
        try:
            while True:
                reason, line = next(run)
                self.increment_counter(COUNTERS, "bad records")
                yield BAD, {"error": reason, "split": split, "record": line.rstrip("\r\n")[:MAX_BAD_RECORD_CHARS]}
        except StopIteration as done:
            metrics = done.value
        self.increment_counter(COUNTERS, "records", metrics.count)
        self.set_status(f"writing the pieces of split {split}")
        state = {k: v.detach().numpy() for k, v in self.model.state_dict().items()}
        reports = write_pieces(state, momentum, self.plans, conf("train.staging"), split=split,
                               count=metrics.count)
        for i, report in enumerate(reports):
            yield shard_key(i, len(self.plans)), report
        yield METRICS, [metrics.loss_sum, metrics.correct, metrics.count]

    def mapper_final(self):
        yield PEAK_RSS, ["map", peak_rss_mib()]

    def reducer_init(self):
        self.parent = open_model(conf("model"), catalog=conf("catalog"), record_stats=False)
        self.plans = train_plans(self.parent.manifest, outer=outer())

    def reducer(self, key, values):
        if key == METRICS:
            yield key, [sum(v) for v in zip(*values, strict=True)]
        elif key == PEAK_RSS:
            yield key, ["map", max(mib for _, mib in values)]
        elif key == BAD:
            yield from ((key, v) for v in values)
        else:
            plan = self.plans[shard_index(key)]
            self.set_status(f"averaging {plan.filename}")
            yield SHARD, reduce_shard(plan, list(values), splits=int(conf("train.splits")), parent=self.parent,
                                      staging_uri=conf("train.staging"), outer=outer(), model=conf("model"))
            self.increment_counter(COUNTERS, "shards written")

    def reducer_final(self):
        self.parent.close()
        yield PEAK_RSS, ["reduce", peak_rss_mib()]


if __name__ == "__main__":
    MRTrain.run()
