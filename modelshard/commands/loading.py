"""Loading and placement subcommands: load, preload, stats, replicate, copy.

``load KEY --stats`` prints what one loading session did (source of each shard, bytes read,
cache and scheduler counters, locality); ``stats KEY`` prints what every recorded session
added up, per shard, which ``replicate --hot`` uses.
"""

from __future__ import annotations

import argparse
import sys

from modelshard.catalog.transfer import DEFAULT_WORKERS
from modelshard.cli import Output, human_bytes, size_arg
from modelshard.errors import UsageError

# The loading and placement modules are imported by the commands that run (start-up time).


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    def command(name: str, run, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(run=run)
        p.add_argument("key", help="name, name@version or name@alias")
        return p

    def cache_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cache-dir", help="preload cache folder (default $MODELSHARD_CACHE, else "
                                           "~/.modelshard/cache)")
        p.add_argument("--max-bytes", type=size_arg, default=None,
                       help="cache size limit, e.g. 20G (default 64G)")

    def tensors(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("--tensors", nargs="+", metavar="NAME", help=what)

    def workers(p: argparse.ArgumentParser) -> None:
        p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                       help=f"shards read at once (default {DEFAULT_WORKERS})")

    p = command("load", _load, "load tensors of a version (the model's by default: a trained "
                               "version's optimizer state only by --tensors) and report how")
    tensors(p, "only these tensors")
    cache_options(p)
    p.add_argument("--budget", type=size_arg, default=None,
                   help="hold whole shards in memory under this limit, e.g. 2G")
    p.add_argument("--policy", choices=("gdsf", "lru"), default="gdsf",
                   help="eviction policy under --budget (default gdsf)")
    p.add_argument("--stats", action="store_true", help="print the session's statistics")
    p.add_argument("--device", help="load into this device's memory: cuda, cuda:N or cpu "
                                    "(torch tensors; default: numpy arrays in host memory)")
    p.add_argument("--pool", type=size_arg, default=None, metavar="SIZE",
                   help="with --device: pinned host memory for the copies (default 256M)")
    workers(p)

    p = command("preload", _preload, "copy a version's shards and assets into the node-local cache")
    tensors(p, "only the shards holding these tensors")
    cache_options(p)
    workers(p)

    command("stats", _stats, "recorded access statistics of a version, per shard")

    p = command("replicate", _replicate, "set the HDFS replication of a version's shards and assets")
    p.add_argument("--replication", type=int, required=True, metavar="N", help="copies, >= 1")
    p.add_argument("--hot", action="store_true",
                   help="only raise it, for the most-read shards (see 'modelshard stats')")
    p.add_argument("--top", type=int, metavar="K",
                   help="with --hot: the K most-read shards (default: every shard read)")
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="set the factor and return; do not wait for HDFS to copy the replicas")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="how long to wait for the replicas (default 300)")

    p = command("copy", _copy, "copy a version to another catalog, verified, atomically")
    p.add_argument("dest", help="the destination catalog (local path or hdfs://...)")
    workers(p)


def _load(args: argparse.Namespace) -> Output:
    from modelshard import loading

    if args.pool is not None and args.device is None:
        raise UsageError("--pool sizes the copies onto a device: give --device too")
    on = {} if args.device is None else {"device": args.device, **(
        {"pool_bytes": args.pool} if args.pool is not None else {})}
    with loading.open(args.key, catalog=args.catalog, cache_dir=args.cache_dir,
                      cache_max_bytes=args.max_bytes, budget_bytes=args.budget,
                      policy=args.policy, workers=args.workers) as h:
        sd = h.load_state_dict(args.tensors, **on)
        s = h.stats()
    data = {"key": h.key, "tensors": len(sd), "bytes": s.bytes_served}
    where = ""
    if args.device is not None:
        data["device"] = where = str(next(iter(sd.values())).device) if sd else args.device
        where = f" on {where}"
    lines = [f"loaded {len(sd)} tensors of {h.key}{where}: {human_bytes(s.bytes_served)}"]
    if args.stats:
        data["stats"] = s.to_dict()
        lines += [f"  shards by source: {s.sources}; local {s.local_shards}, remote "
                  f"{s.remote_shards}",
                  f"  read by range: {human_bytes(s.range_bytes)} in {s.range_reads} reads; "
                  f"checked: {human_bytes(s.verified_bytes)}"]
        if s.cache:
            c = s.cache
            lines.append(f"  cache: {c.hits} hits, {c.misses} misses, fetched "
                         f"{human_bytes(c.bytes_fetched)}, {c.corrupt_dropped} damaged dropped")
        if s.scheduler:
            q = s.scheduler
            lines.append(f"  scheduler: {q.hits} hits, {q.misses} misses, fetched "
                         f"{human_bytes(q.bytes_fetched)}, {q.evictions} evictions, peak "
                         f"{human_bytes(q.peak_bytes_held)} of {human_bytes(q.budget_bytes)}")
    return Output(data, "\n".join(lines))


def _preload(args: argparse.Namespace) -> Output:
    from modelshard import loading

    r = loading.preload(args.key, tensors=args.tensors, catalog=args.catalog,
                        cache_dir=args.cache_dir, max_bytes=args.max_bytes, workers=args.workers)
    return Output(r.to_dict(), f"preloaded {r.key}: {r.shards} shards and {r.assets} assets, "
                               f"{human_bytes(r.bytes)} "
                               f"in {r.cache_dir} ({r.fetched} fetched, "
                               f"{r.shards - r.fetched} already there)")


def _stats(args: argparse.Namespace) -> Output:
    from modelshard import placement

    r = placement.access_stats(args.key, catalog=args.catalog)
    lines = [f"{r.key}: {r.sessions} sessions; shards read from a local replica {r.local}, "
             f"remote {r.remote}", f"{'READS':>7} {'REPL':>4} {'SIZE':>11}  SHARD"]
    lines += [f"{s.reads:>7} {s.replication:>4} {human_bytes(s.size):>11}  {s.path}"
              for s in r.shards]
    return Output(r.to_dict(), "\n".join(lines))


def _replicate(args: argparse.Namespace) -> Output:
    from modelshard import placement

    r = placement.replicate(args.key, replication=args.replication, hot=args.hot, top=args.top,
                            wait=args.wait, timeout=args.timeout, catalog=args.catalog)
    if r.warning:
        print(f"modelshard replicate: warning: {r.warning}", file=sys.stderr)
    lines = [f"{r.key}: {len(r.shards)} files (shards and assets) set to replication {r.replication}"]
    lines += [f"  {s['path']}: {s['before']} -> {s['after']}; replicas per block "
              f"{','.join(map(str, s['replicas']))} on {','.join(sorted({h for b in s['hosts'] for h in b}))}"
              for s in r.shards]
    return Output(r.to_dict(), "\n".join(lines))


def _copy(args: argparse.Namespace) -> Output:
    from modelshard import placement

    m = placement.copy(args.key, args.dest, catalog=args.catalog, workers=args.workers)
    return Output({"name": m.name, "version": m.version, "dest": args.dest,
                   "shards": len(m.shards)},
                  f"copied {m.name}@{m.version} to {args.dest}: {len(m.shards)} shards verified")
