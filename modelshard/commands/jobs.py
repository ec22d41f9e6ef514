"""The streaming-job subcommands: train, predict, reshard. Each renders its job XML from
``templates/``, runs on mrjob's inline, local or hadoop runner, and prints the YARN
application id and tracking URL (on stderr) as the job starts. And ``envs``: the task
environments those jobs ship to HDFS."""

from __future__ import annotations

import argparse
import sys

from modelshard.cli import Output, duration_arg, human_bytes, size_arg
from modelshard.errors import UsageError
from modelshard.jobs.hadoop import RUNNERS
from modelshard.jobs.models import ModelSpec
from modelshard.jobs.parquet import FORMATS as OUTPUT_FORMATS
from modelshard.jobs.records import FORMATS


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    job = argparse.ArgumentParser(add_help=False, parents=[common])
    job.add_argument("--runner", "-r", choices=RUNNERS, default="local",
                     help="mrjob runner: inline (one process), local (a process per task; the "
                          "default) or hadoop (YARN)")
    job.add_argument("-D", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a property of the rendered job XML (repeatable)")
    for flag, default, what in (("--queue", None, "YARN queue"),
                                ("--am-memory-mb", None, "ApplicationMaster memory"),
                                ("--map-memory-mb", None, "map container memory"),
                                ("--reduce-memory-mb", None, "reduce container memory"),
                                ("--io-sort-mb", None, "map-side sort buffer")):
        job.add_argument(flag, default=default, help=f"{what} (job XML; default from the template)")
    job.add_argument("--python-archive", metavar="URI",
                     help="hdfs:// URI of a ready task environment (a tar with bin/python at its root, e.g. "
                          "from conda-pack) instead of the one packed from this Python; default "
                          "$MODELSHARD_PYTHON_ARCHIVE")
    job.add_argument("--no-mrjob-conf", dest="mrjob_conf", action="store_false",
                     help="ignore the site mrjob.conf ($MRJOB_CONF, ~/.mrjob.conf, /etc/mrjob.conf)")
    trust = argparse.ArgumentParser(add_help=False)
    trust.add_argument("--trust-code", action="store_true",
                       help="build a model factory that is not registered: imports and runs the "
                            "module:function the model's spec names (only for catalogs you trust)")

    p = sub.add_parser("train", parents=[job, trust], help="train a model by parameter averaging, one job per epoch",
                       description="Train KEY on the records under DATA, one MapReduce pass per epoch; "
                                   "every epoch commits a new version, and a rerun resumes after the last.")
    p.add_argument("key", help="model name (or name@version to start from)")
    p.add_argument("data", help="file or folder of training records; each file is one split")
    p.add_argument("--epochs", type=int, required=True, help="train up to this epoch")
    p.add_argument("--init", metavar="SPEC", help='create the model from a spec: JSON {"factory": '
                   '"NAME", "kwargs": {...}} naming a registered factory, or mlp:64,64,10 for the '
                   'built-in MLP')
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=32,
                   help="records per SGD step over all splits: each split takes its share (default 32)")
    p.add_argument("--outer-lr", type=float,
                   help="outer optimizer's step on the averaged update (default 1: with --outer-momentum 0, "
                        "plain averaging)")
    p.add_argument("--outer-momentum", type=float,
                   help="outer optimizer's Nesterov momentum (default 0)")
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same weights on every runner")
    p.add_argument("--format", choices=FORMATS, default="jsonl")
    p.add_argument("--eval", metavar="DATA", help="labelled records to report test accuracy on")
    p.add_argument("--out", metavar="DIR", help="write metrics.jsonl and curves.png here")
    p.set_defaults(run=_train)

    p = sub.add_parser("predict", parents=[job, trust], help="predict every record of DATA into OUTPUT",
                       description="Batch prediction as a map-only job: OUTPUT gets lines "
                                   "id<TAB>value (both JSON; the value --output asks for), and "
                                   "_bad_records.jsonl for the records that do not fit, with the reason.")
    p.add_argument("key")
    p.add_argument("data", help="file or folder of records")
    p.add_argument("output", help="a folder that does not exist yet")
    p.add_argument("--format", choices=FORMATS, default="jsonl")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--input", dest="inputs", default="features", metavar="KIND",
                   help="what a record holds: features (the x list; default), tokens[:FIELD] (token "
                        "ids, default field input_ids) or text:FIELD (tokenized by the model's own "
                        "tokenizer in the tasks)")
    p.add_argument("--output", dest="outputs", default="class", metavar="KIND",
                   help="what to emit per record: class (default), scores, topk:K, embedding or tensor")
    p.add_argument("--output-format", choices=OUTPUT_FORMATS, default="jsonl",
                   help="jsonl: id<TAB>value lines (default); parquet: part-NNNNN.parquet files of "
                        "id and the output, for Hive and Spark")
    p.add_argument("--cache-dir", help="the nodes' preload cache: tasks read verified shards from it")
    p.add_argument("--budget", type=size_arg, help="most model bytes a task holds in memory, e.g. 2G")
    p.set_defaults(run=_predict)

    p = sub.add_parser("reshard", parents=[job], help="rewrite a version with new shards (and dtype)",
                       description="A new version of the model with a new shard size or count, "
                                   "optionally casting floating-point tensors; bit-exact otherwise.")
    p.add_argument("key")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--shard-size", type=size_arg, help="target shard size, e.g. 64M (at least 1M)")
    size.add_argument("--shards", type=int, help="number of shards")
    p.add_argument("--dtype", help="cast floating-point tensors, e.g. BF16, F16, F32")
    p.add_argument("--alias", action="append", default=[], dest="aliases")
    p.add_argument("--tasks", type=int, default=4, help="map tasks writing the new shards (default 4)")
    p.add_argument("--with-optimizer-state", action="store_true",
                   help="keep a trained version's optimizer state (inner_momentum:* and outer_momentum:* "
                        "tensors, which training resumes from); by default the new version holds the model's "
                        "tensors only")
    p.set_defaults(run=_reshard)

    what = "list the task environments shipped to HDFS for --runner hadoop, or prune the stale ones"
    p = sub.add_parser("envs", parents=[common], help=what, description=what)
    p.add_argument("action", nargs="?", choices=("list", "prune"), default="list")
    p.add_argument("--older-than", type=duration_arg, default=24 * 3600,
                   help="prune only archives written this long ago, e.g. 0, 2h, 7d (default 24h: a job "
                        "of another Python may still be localizing an archive it shipped lately)")
    p.add_argument("--dry-run", action="store_true", help="list what prune would remove, remove nothing")
    p.set_defaults(run=_envs)


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _job_args(args: argparse.Namespace) -> dict:
    overrides = {}
    for item in args.overrides:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"-D {item!r}: write -D key=value")
        overrides[k] = v
    options = {name: getattr(args, name) for name in
               ("queue", "am_memory_mb", "map_memory_mb", "reduce_memory_mb", "io_sort_mb")
               if getattr(args, name) is not None}
    return {"runner": args.runner, "catalog": args.catalog, "overrides": overrides, "job_options": options,
            "python_archive": args.python_archive, "mrjob_conf": args.mrjob_conf, "echo": _echo}


def _train(args: argparse.Namespace) -> Output:
    from modelshard.jobs.records import read_labeled
    from modelshard.jobs.train.driver import train
    from modelshard.jobs.train.reduce_task import Outer

    test = read_labeled(args.eval, args.format) if args.eval else None
    r = train(args.key, args.data, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
              init=ModelSpec.from_text(args.init) if args.init else None, fmt=args.format, seed=args.seed,
              outer=Outer(**{k: v for k, v in (("lr", args.outer_lr), ("momentum", args.outer_momentum))
                             if v is not None}),
              test_data=test, out_dir=args.out, trust_code=args.trust_code, **_job_args(args))
    epochs = [e.__dict__ for e in r.epochs]
    last = r.epochs[-1] if r.epochs else None
    text = (f"trained {r.key} to epoch {last.epoch} ({r.key}@{last.version}): loss {last.loss:.4f}, "
            f"accuracy {last.accuracy:.4f}" + (f", test accuracy {last.test_accuracy:.4f}"
                                               if last.test_accuracy is not None else "")
            if last else f"{r.key} is already trained to epoch {args.epochs}; nothing to do")
    if r.bad_records:
        text += f"; {len(r.bad_records)} bad records skipped (see --json)"
    return Output({"model": r.key, "epochs": epochs, "bad_records": r.bad_records,
                   "metrics": r.metrics_path, "plot": r.plot_path}, text)


def _predict(args: argparse.Namespace) -> Output:
    from modelshard.jobs.predict.driver import predict

    r = predict(args.key, args.data, args.output, fmt=args.format, batch_size=args.batch_size,
                cache_dir=args.cache_dir, budget_bytes=args.budget, trust_code=args.trust_code,
                inputs=args.inputs, outputs=args.outputs, output_format=args.output_format,
                **_job_args(args))
    return Output(r.__dict__, f"predicted {r.records - r.bad_records} records with {r.model} into {r.output}"
                              + (f"; {r.bad_records} bad records in _bad_records.jsonl" if r.bad_records else ""))


def _reshard(args: argparse.Namespace) -> Output:
    from modelshard.jobs.reshard.driver import reshard

    m = reshard(args.key, shard_size=args.shard_size, shard_count=args.shards, dtype=args.dtype,
                tasks=args.tasks, aliases=args.aliases, with_optimizer_state=args.with_optimizer_state,
                **_job_args(args))
    return Output({"name": m.name, "version": m.version, "shards": len(m.shards), "total_size": m.total_size},
                  f"resharded {args.key} into {m.name}@{m.version}: {len(m.shards)} shards, "
                  f"{human_bytes(m.total_size)}")


def _envs(args: argparse.Namespace) -> Output:
    import os

    from modelshard.catalog.catalog import default_uri
    from modelshard.fs import get_fs
    from modelshard.jobs.environment import prune, stored_archives
    from modelshard.jobs.hadoop import ENV_DIR_VAR, env_dir

    catalog = args.catalog or default_uri()
    if not catalog.startswith("hdfs://") and not os.environ.get(ENV_DIR_VAR):
        raise UsageError(f"catalog {catalog}: task environments are shipped beside an hdfs:// catalog; "
                         f"pass --catalog hdfs://... (or set ${ENV_DIR_VAR})")
    fs, folder = get_fs(env_dir(catalog))
    if args.action == "list":
        found = stored_archives(fs, folder)
        lines = [f"{a.path.rsplit('/', 1)[-1]}  {human_bytes(a.size)}{'  (this Python)' if a.current else ''}"
                 for a in found]
        return Output([a.__dict__ for a in found], "\n".join(lines) or f"no archives in {fs.uri(folder)}")
    removed = prune(fs, folder, older_than=args.older_than, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    lines = [f"{verb} {fs.uri(a.path)} ({human_bytes(a.size)})" for a in removed]
    return Output([a.__dict__ for a in removed], "\n".join(lines) or "nothing to remove")
