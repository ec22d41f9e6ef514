"""The model store's subcommands: push, pull, ls, show, verify, rm, alias, gc."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from modelshard import api
from modelshard.catalog.transfer import DEFAULT_WORKERS
from modelshard.cli import Output, duration_arg, human_bytes, size_arg
from modelshard.shards.planner import DEFAULT_SHARD_SIZE


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    def command(name: str, run, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(run=run)
        return p

    def workers(p: argparse.ArgumentParser) -> None:
        p.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                       help=f"shards moved at once (default {DEFAULT_WORKERS})")

    p = command("push", _push, "store a model as a new version")
    p.add_argument("source", help="a .safetensors, .pt/.pth/.bin file, a Hugging Face model "
                                  "folder or a folder of .npy files")
    p.add_argument("key", help="name (next version number) or name@version")
    p.add_argument("--shard-size", type=size_arg, default=DEFAULT_SHARD_SIZE,
                   help="target shard size, e.g. 64M (default 128M, one HDFS block)")
    p.add_argument("--alias", action="append", default=[], dest="aliases",
                   help="also point this alias at the new version (repeatable)")
    p.add_argument("--paranoid", action="store_true",
                   help="read every shard back and check its sha256 (default: the storage's "
                        "own checksum, no read-back)")
    p.add_argument("--model", metavar="FACTORY[:KWARGS]",
                   help="the factory that builds the model for predict and train: mlp:64,64,10, "
                        "transformers (the default for a folder with config.json), "
                        "'transformers:head=sequence-classification', a modelshard.models entry "
                        "point, or JSON {\"factory\": ..., \"kwargs\": {...}}")
    p.add_argument("--trust-code", action="store_true",
                   help="accept a --model module:function that is not registered")
    workers(p)

    p = command("pull", _pull, "write a version to a folder that Hugging Face tools load")
    p.add_argument("key", help="name, name@version or name@alias")
    p.add_argument("dest", help="a new or empty folder")
    p.add_argument("--with-optimizer-state", action="store_true",
                   help="also write a trained version's optimizer state (inner_momentum:* and "
                        "outer_momentum:* tensors; by default only the model's tensors)")
    workers(p)

    p = command("ls", _ls, "list the versions of one model or of all")
    p.add_argument("name", nargs="?")

    p = command("show", _show, "describe a version: size, tensors, shard size spread")
    p.add_argument("key")
    p.add_argument("--tensors", action="store_true", help="also list every tensor")

    p = command("verify", _verify, "recompute every shard's checksums from storage")
    p.add_argument("key")
    p.add_argument("--upgrade", action="store_true",
                   help="add CRC32C checksums to a version pushed before them")
    workers(p)

    p = command("rm", _rm, "remove a version (name@version) or a whole model (name)")
    p.add_argument("key")
    p.add_argument("--yes", action="store_true", help="confirm: removing is permanent")
    held = p.add_mutually_exclusive_group()
    held.add_argument("--move-aliases-to", metavar="VERSION",
                      help="point the aliases of the removed version at this version (or alias)")
    held.add_argument("--drop-aliases", action="store_true",
                      help="remove the aliases that point at the removed version")

    p = command("alias", _alias, "show, move or remove an alias (name@alias)")
    p.add_argument("key", help="name@alias")
    p.add_argument("target", nargs="?", help="a version, or an alias to copy")
    p.add_argument("--rm", action="store_true", dest="remove", help="remove the alias")

    p = command("gc", _gc, "remove what crashed pushes and removals left behind")
    p.add_argument("--older-than", type=duration_arg, default=api.DEFAULT_GC_AGE,
                   help="only staging folders and expired claims idle this long, e.g. 0, 2h, "
                        "7d (default 24h; live pushes renew their claims, so 0 is safe)")
    p.add_argument("--dry-run", action="store_true", help="list, remove nothing")


def _push(args: argparse.Namespace) -> Output:
    attrs = {}
    if args.model:
        from modelshard.jobs.models import SPEC_ATTR, ModelSpec, factory

        spec = ModelSpec.from_text(args.model)
        factory(spec.factory, trust_code=args.trust_code)  # refuse an unknown one before pushing
        attrs[SPEC_ATTR] = spec.dumps()
    m = api.push(args.source, args.key, catalog=args.catalog, shard_size=args.shard_size,
                 workers=args.workers, aliases=args.aliases, paranoid=args.paranoid, attrs=attrs)
    skipped = json.loads(m.attrs.get(api.SKIPPED_ATTR, "[]"))
    data = {"name": m.name, "version": m.version, "tensors": len(m.tensors),
            "shards": len(m.shards), "total_size": m.total_size, "assets": len(m.assets),
            "skipped": skipped}
    text = (f"pushed {m.name}@{m.version}: {len(m.tensors)} tensors, {len(m.shards)} shards, "
            f"{human_bytes(m.total_size)}" + (f"; {len(m.assets)} other files as assets" if m.assets else ""))
    if skipped:
        text += f"; skipped {len(skipped)} files (hidden, or weights in another format): {', '.join(skipped)}"
    return Output(data, text)


def _pull(args: argparse.Namespace) -> Output:
    uri = api.pull(args.key, args.dest, catalog=args.catalog, workers=args.workers,
                   with_optimizer_state=args.with_optimizer_state)
    return Output({"key": args.key, "dest": uri}, f"pulled {args.key} to {uri}")


def _ls(args: argparse.Namespace) -> Output:
    rows = api.ls(args.name, catalog=args.catalog)
    lines = [f"{'MODEL':24} {'VERSION':10} {'CREATED':21} {'SIZE':>11} {'SHARDS':>6}  ALIASES"]
    lines += [f"{r.name:24} {r.version:10} {r.created:21} {human_bytes(r.total_size):>11} "
              f"{r.shards:>6}  {','.join(r.aliases)}" for r in rows]
    return Output([r.to_dict() for r in rows], "\n".join(lines) if rows else "no models")


def _show(args: argparse.Namespace) -> Output:
    r = api.show(args.key, catalog=args.catalog)
    s, i = r.spread, r.info
    lines = [f"{i.name}@{i.version}  created {i.created}  aliases: {', '.join(i.aliases) or '-'}",
             f"{i.tensors} tensors ({len(r.split_tensors)} split by rows), "
             f"{human_bytes(i.total_size)} in {s.count} shards (target "
             f"{human_bytes(r.shard_size)})",
             f"shard sizes: min {human_bytes(s.min)}, max {human_bytes(s.max)}, "
             f"mean {human_bytes(s.mean)}, imbalance {s.imbalance:.3f} (max/mean)"]
    assets = r.manifest.assets.values()
    if assets:
        lines.append(f"{len(assets)} assets, {human_bytes(sum(a.size for a in assets))}:")
        lines += [f"  {a.name}  {human_bytes(a.size)}" for a in assets]
    if args.tensors:
        lines += [f"  {n}  {t.dtype.name}  {list(t.shape)}" + (
            f"  in {len(t.pieces)} pieces" if t.is_split else "")
            for n, t in r.manifest.tensors.items()]
    data = r.to_dict()
    if not args.tensors:
        del data["tensor_list"]
    return Output(data, "\n".join(lines))


def _verify(args: argparse.Namespace) -> Output:
    i = api.verify(args.key, catalog=args.catalog, workers=args.workers, upgrade=args.upgrade)
    done = "; CRC32C checksums in place" if args.upgrade else ""
    return Output({**i.to_dict(), "ok": True}, f"{i.name}@{i.version}: {i.shards} shards ok{done}")


def _rm(args: argparse.Namespace) -> Output:
    api.rm(args.key, confirm=args.yes, move_aliases_to=args.move_aliases_to,
           drop_aliases=args.drop_aliases, catalog=args.catalog)
    return Output({"removed": args.key}, f"removed {args.key}")


def _alias(args: argparse.Namespace) -> Output:
    version = api.alias(args.key, args.target, remove=args.remove, catalog=args.catalog)
    text = f"removed {args.key}" if args.remove else f"{args.key} -> {version}"
    return Output({"alias": args.key, "version": version}, text)


def _gc(args: argparse.Namespace) -> Output:
    removed = api.gc(older_than=args.older_than, dry_run=args.dry_run, catalog=args.catalog)
    verb = "would remove" if args.dry_run else "removed"
    lines = [f"{verb} {r.path} ({r.reason})" for r in removed]
    return Output([asdict(r) for r in removed], "\n".join(lines) or "nothing to remove")
