"""The serving subcommands: ``serve`` (one server, here) and ``serve-yarn`` (replicas of it
as a long-running YARN application: start, list, stop)."""

from __future__ import annotations

import argparse
import sys

from modelshard.cli import Output, duration_arg, size_arg


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--budget", type=size_arg, required=True,
                         help="memory for the models' shards, shared by all models, e.g. 8G")
    options.add_argument("--pin", action="append", default=[], metavar="NAME@ALIAS",
                         help="hold this model in memory whole, and its new versions (repeatable)")
    options.add_argument("--cache-dir", help="preload cache the shards are read through")
    options.add_argument("--cache-max-bytes", type=size_arg, default=None,
                         help="preload cache size limit (default 64G)")
    options.add_argument("--policy", choices=("gdsf", "lru"), default="gdsf",
                         help="which idle shards go first when room is needed (default gdsf: cost-aware)")
    options.add_argument("--idle-release", type=duration_arg, default=None, metavar="DURATION",
                         help="free shards unused this long (default: only when room is needed)")
    options.add_argument("--alias-ttl", type=duration_arg, default=2.0, metavar="DURATION",
                         help="look an alias up again after this long (default 2s)")
    options.add_argument("--max-body", type=size_arg, default=1 << 20,
                         help="largest request body (default 1M)")
    options.add_argument("--max-records", type=int, default=1024, help="most records per request")
    options.add_argument("--timeout", type=duration_arg, default=30.0, metavar="DURATION",
                         help="answer within this long or give 504 (default 30s)")
    options.add_argument("--max-concurrency", type=int, default=64,
                         help="requests in flight per model before 429 (default 64)")
    options.add_argument("--workers", type=int, default=4,
                         help="batches running at once (others may fetch their shards meanwhile)")
    options.add_argument("--threads", type=int, default=1,
                         help="torch threads per batch (default 1: the batches running at once, "
                              "--workers, are the parallelism)")
    options.add_argument("--trust-code", action="store_true",
                         help="build a model factory that is not registered (as for predict)")

    p = sub.add_parser("serve", parents=[common, options],
                       help="serve predictions of many models over HTTP under one memory budget",
                       description="A long-running prediction server: POST "
                                   "/v1/models/NAME@ALIAS:predict, GET /v1/models, /status, /metrics, "
                                   "/healthz, /readyz. Stops gracefully on SIGTERM or SIGINT.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free one)")
    p.add_argument("--registry", metavar="URI",
                   help="folder (e.g. hdfs:///serve/NAME) where this replica lists itself while it serves")
    p.set_defaults(run=_serve)

    p = sub.add_parser("serve-yarn", parents=[common],
                       help="run replicas of 'modelshard serve' as a long-running YARN application",
                       description="start: submit N replicas (restarted by YARN when they fail); "
                                   "list: the replicas that serve now; stop: kill the application.")
    ysub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = ysub.add_parser("start", parents=[common, options], help="submit the replicas")
    s.add_argument("name", help="the service's name (its registry folder and YARN application name)")
    s.add_argument("--replicas", type=int, default=2)
    s.add_argument("--memory-mb", type=int, default=None,
                   help="container memory (default: the budget plus 1.5 GiB for Python and torch)")
    s.add_argument("--port", type=int, default=0, help="port on each node (default 0: any free one)")
    s.add_argument("--near", action="append", default=None, metavar="NAME@ALIAS",
                   help="prefer the hosts that hold this model's blocks (repeatable; default: the --pin "
                        "models; 'none': anywhere)")
    s.add_argument("--retries", type=int, default=10,
                   help="restarts of each replica's process in its container, and new containers for it")
    s.add_argument("--python-archive", metavar="URI", help="task environment to use (as for the jobs)")
    s.add_argument("--wait", type=duration_arg, default=600.0, metavar="DURATION",
                   help="wait this long for every replica to be ready (0: do not wait)")
    s.set_defaults(run=_yarn_start)
    for action, run, what in (("list", _yarn_list, "the replicas that answer now"),
                              ("stop", _yarn_stop, "kill the application and clear its registry")):
        s = ysub.add_parser(action, parents=[common], help=what)
        s.add_argument("name", help="the service's name")
        s.set_defaults(run=run)


def _pool(args: argparse.Namespace):  # noqa: ANN202 - the serve module loads torch lazily
    from modelshard.loading import open_cache
    from modelshard.serve import ModelPool

    cache = open_cache(args.cache_dir, args.cache_max_bytes) if args.cache_dir else None
    return ModelPool(args.catalog, budget_bytes=args.budget, cache=cache, policy=args.policy,
                     alias_ttl_s=args.alias_ttl, idle_release_s=args.idle_release,
                     trust_code=args.trust_code)


def _serve(args: argparse.Namespace) -> Output:
    import asyncio
    import logging

    from modelshard.serve import Server, serve
    from modelshard.serve import registry as reg
    from modelshard.serve.yarn import replica_info

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = Server(_pool(args), max_body_bytes=args.max_body, max_records=args.max_records,
                    timeout_s=args.timeout, max_concurrency=args.max_concurrency,
                    workers=args.workers)
    where: dict[str, object] = {}

    def listening(host: str, port: int) -> None:
        where.update(host=host, port=port)
        print(f"modelshard serve: listening on http://{host}:{port}", file=sys.stderr, flush=True)
        if args.registry:
            reg.register(args.registry, host, port, **replica_info())

    def stopping() -> None:
        if args.registry and where:
            reg.unregister(args.registry, where["host"], where["port"])

    asyncio.run(serve(server, host=args.host, port=args.port, pins=tuple(args.pin),
                      on_listening=listening, on_stopping=stopping, threads=args.threads))
    return Output(where, "modelshard serve: stopped")


def _serve_argv(args: argparse.Namespace) -> list[str]:
    """The server options of ``serve-yarn start``, as ``serve`` takes them on each replica."""
    argv = ["--budget", str(args.budget), "--policy", args.policy, "--alias-ttl", str(args.alias_ttl),
            "--max-body", str(args.max_body), "--max-records", str(args.max_records),
            "--timeout", str(args.timeout), "--max-concurrency", str(args.max_concurrency),
            "--workers", str(args.workers), "--threads", str(args.threads)]
    for key in args.pin:
        argv += ["--pin", key]
    if args.cache_dir:
        argv += ["--cache-dir", args.cache_dir]
    if args.cache_max_bytes:
        argv += ["--cache-max-bytes", str(args.cache_max_bytes)]
    if args.idle_release is not None:
        argv += ["--idle-release", str(args.idle_release)]
    if args.trust_code:
        argv.append("--trust-code")
    return argv


def _yarn_start(args: argparse.Namespace) -> Output:
    from modelshard.serve import yarn

    memory_mb = args.memory_mb or (args.budget >> 20) + 1536
    near = args.pin if args.near is None else [k for k in args.near if k != "none"]
    app = yarn.start(args.name, _serve_argv(args), catalog=args.catalog, replicas=args.replicas,
                     memory_mb=memory_mb, port=args.port, retries=args.retries, near=near,
                     python_archive=args.python_archive, wait_s=args.wait,
                     echo=lambda line: print(line, file=sys.stderr, flush=True))
    lines = [f"{app.application_id}: {len(app.replicas)} replicas ready"]
    lines += [f"  {_where(r)}" for r in app.replicas]
    return Output(app.to_dict(), "\n".join(lines))


def _where(replica: dict) -> str:
    """``http://host:port``, whether its node holds the blocks it was placed by, its container."""
    place = ""
    if "local" in replica:
        place = ("on a host holding its models' blocks" if replica["local"]
                 else f"not on the hosts holding its models' blocks ({', '.join(replica.get('near', []))})")
    return "  ".join(x for x in (f"http://{replica['host']}:{replica['port']}", place,
                                  replica.get("container") or "") if x)


def _yarn_list(args: argparse.Namespace) -> Output:
    from modelshard.serve import yarn

    found = yarn.replicas(args.name, catalog=args.catalog)
    return Output(found, "\n".join(map(_where, found)) or "no replica answers")


def _yarn_stop(args: argparse.Namespace) -> Output:
    from modelshard.serve import yarn

    app_id = yarn.stop(args.name, catalog=args.catalog)
    return Output({"application_id": app_id}, f"{app_id}: killed")
