"""The training driver: one ``mr_train`` pass per epoch, each committing a new version.

Every version records its epoch, model spec and metrics in its manifest attrs, so a
training run that stopped (a failed job, a killed driver) resumes after the last committed
epoch. Metrics go to ``metrics.jsonl`` and ``curves.png`` in ``out_dir``.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelshard.catalog.catalog import Catalog
from modelshard.catalog.commit import carry_assets, commit_version, shard_path, staged_manifest
from modelshard.catalog.keys import LATEST, parse_key
from modelshard.catalog.manifest import Manifest
from modelshard.errors import FormatError, NotFoundError, UsageError
from modelshard.jobs.config import parse_job_xml, render_job_xml
from modelshard.jobs.hadoop import check_catalog
from modelshard.jobs.launch import data_files, run_job, task_inputs
from modelshard.jobs.modelio import SPEC_ATTR, load_model, model_spec
from modelshard.jobs.models import ModelSpec, build
from modelshard.jobs.train.reduce_task import PIECES_DIR, Outer, train_plans
from modelshard.jobs.train.task import SHUFFLE_BUFFER_BYTES, Metrics, evaluate
from modelshard.shards.checksums import Checksums
from modelshard.shards.format import Written
from modelshard.shards.planner import ShardPlan
from mr_tasks.mr_train import MRTrain

EPOCH_ATTR = "train.epoch"
DEFAULT_OUTER = Outer()


@dataclass
class EpochResult:
    epoch: int
    version: str
    loss: float
    accuracy: float
    records: int
    bad_records: int
    application_id: str | None = None
    test_accuracy: float | None = None
    shuffle_bytes: int | None = None  # Hadoop's "Reduce shuffle bytes" (YARN only)
    peak_rss_map_mib: int | None = None  # the largest of the tasks'
    peak_rss_reduce_mib: int | None = None


@dataclass
class TrainResult:
    key: str
    epochs: list[EpochResult] = field(default_factory=list)
    bad_records: list[dict] = field(default_factory=list)
    metrics_path: str | None = None
    plot_path: str | None = None


def init_model(catalog: Catalog, name: str, spec: ModelSpec, *, trust_code: bool = False) -> str:
    """Push the initial weights of ``spec`` as epoch 0 of ``name``; returns the version."""
    from modelshard.api import push

    state = {k: v.detach().numpy() for k, v in build(spec, trust_code=trust_code).state_dict().items()}
    manifest = push(state, name, catalog=catalog, attrs={SPEC_ATTR: spec.dumps(), EPOCH_ATTR: "0"})
    return manifest.version


def train(
    key: str,
    data: str,
    *,
    epochs: int,
    lr: float = 0.05,
    batch_size: int = 32,
    outer: Outer = DEFAULT_OUTER,
    seed: int = 0,
    shuffle_buffer_bytes: int = SHUFFLE_BUFFER_BYTES,
    runner: str = "inline",
    catalog: str | None = None,
    init: ModelSpec | None = None,
    fmt: str = "jsonl",
    test_data: tuple[np.ndarray, np.ndarray] | None = None,
    out_dir: str | os.PathLike | None = None,
    job_options: dict | None = None,
    overrides: dict[str, str] | None = None,
    python_archive: str | None = None,
    mrjob_conf: bool = True,
    echo: Callable[[str], object] | None = None,
    trust_code: bool = False,
) -> TrainResult:
    """Train ``key`` on the records under ``data`` (each file one split) up to ``epochs``
    epochs::

        train("digits", "hdfs:///data/digits/train", epochs=10, runner="hadoop",
              init=ModelSpec("mlp", {"sizes": [64, 64, 10]}))

    Starts after the newest version's epoch (so a rerun resumes, the outer optimizer's
    state included); ``init`` creates the model if it does not exist. Each epoch's version
    gets ``latest``; it has the shards planned at the model's shard size, one reducer each.
    ``seed``: the same seed gives the same weights on every runner. ``trust_code``: allow a
    model factory that is not registered (driver and tasks import whatever the spec names).
    """
    if epochs < 1:
        raise UsageError(f"epochs={epochs}: train for at least one epoch")
    cat = Catalog(catalog)
    check_catalog(runner, cat.uri)
    name = parse_key(key).name
    data_fs, files = data_files(data)
    splits = [{"split": i, "file": data_fs.uri(f.path)} for i, f in enumerate(sorted(files, key=lambda f: f.path))]
    try:
        version = cat.resolve(key)[1]
    except NotFoundError:
        if init is None:
            raise
        version = init_model(cat, name, init, trust_code=trust_code)
    spec = model_spec(cat, f"{name}@{version}", trust_code=trust_code)
    result = TrainResult(key=name)
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        result.metrics_path, result.plot_path = str(out / "metrics.jsonl"), str(out / "curves.png")
    start = int(cat.manifest(name, version).attrs.get(EPOCH_ATTR, "0")) + 1
    for epoch in range(start, epochs + 1):
        run: dict = {}

        def stage(new_version: str, staging: str, epoch: int = epoch, parent: str = version,
                  run: dict = run) -> Manifest:
            parent_manifest = cat.manifest(name, parent)
            plans = train_plans(parent_manifest, outer=outer)
            xml = render_job_xml("train", **{
                "job_name": f"modelshard-train {name} epoch {epoch}", "num_maps": len(splits),
                "num_reduces": len(plans), "catalog": cat.uri, "model": f"{name}@{parent}",
                "input": data, "output": "", "format": fmt, "epoch": epoch, "lr": lr,
                "batch_size": batch_size, "seed": seed * 1_000_003 + epoch * 1000, "staging": cat.fs.uri(staging),
                "splits": len(splits), "outer_lr": outer.lr, "outer_momentum": outer.momentum,
                "shuffle_buffer_bytes": shuffle_buffer_bytes, "trust_code": trust_code, **(job_options or {})})
            try:
                with task_inputs(runner, cat.fs, [[s] for s in splits]) as inputs:
                    job = run_job(MRTrain, runner=runner, inputs=inputs, output_dir=None,
                                  jobconf=parse_job_xml(xml), catalog=cat.uri, python_archive=python_archive,
                                  mrjob_conf=mrjob_conf, overrides=overrides, echo=echo)
                shards, written = committed_shards(plans, [v for k, v in job.output if k == ["shard"]],
                                                   where=f"epoch {epoch} of {name}")
            finally:
                # The splits' pieces and the shards of failed attempts are not part of the version.
                cat.fs.delete(posixpath.join(staging, PIECES_DIR), recursive=True)
            # Only the reported shards stay, under their planned names (one rename each).
            kept = {p.filename: plan.filename for p, plan in zip(shards, plans, strict=True)}
            for f in cat.fs.ls(shard_path(staging, "")):
                if posixpath.basename(f.path) not in kept:
                    cat.fs.delete(f.path)
            for file, planned in kept.items():
                if file != planned:
                    cat.fs.rename(shard_path(staging, file), shard_path(staging, planned))
            sums = next((v for k, v in job.output if k == ["metrics"]), None)
            rss = {kind: mib for k, (kind, mib) in ((k, v) for k, v in job.output if k == ["peak RSS MiB"])}
            run.update(job=job, metrics=Metrics(*sums), bad=[v for k, v in job.output if k is None], rss=rss)
            m = run["metrics"]
            attrs = {SPEC_ATTR: spec.dumps(), EPOCH_ATTR: str(epoch), "train.parent": parent,
                     "train.loss": f"{m.loss:.6g}", "train.accuracy": f"{m.accuracy:.6g}",
                     "train.outer_lr": str(outer.lr), "train.outer_momentum": str(outer.momentum)}
            # Each epoch keeps the model's config and tokenizer files.
            assets = carry_assets(cat, parent_manifest, cat.fs, staging, workers=4)
            return staged_manifest(cat, name, new_version, staging, plans, written,
                                   shard_size=parent_manifest.shard_size, workers=4, attrs=attrs, assets=assets)

        version = commit_version(cat, name, None, stage, aliases=[LATEST]).version
        job, metrics, bad, rss = run["job"], run["metrics"], run["bad"], run["rss"]
        er = EpochResult(epoch, version, metrics.loss, metrics.accuracy, metrics.count, len(bad), job.application_id,
                         shuffle_bytes=job.counters.get("Map-Reduce Framework", {}).get("Reduce shuffle bytes"),
                         peak_rss_map_mib=rss.get("map"), peak_rss_reduce_mib=rss.get("reduce"))
        if test_data is not None:
            er.test_accuracy = evaluate(load_model(cat.uri, f"{name}@{version}", trust_code=trust_code),
                                       *test_data).accuracy
        result.epochs.append(er)
        result.bad_records += bad
        if echo:
            echo(f"epoch {epoch}: {name}@{version} loss {er.loss:.4f} accuracy {er.accuracy:.4f}"
                 + (f" test accuracy {er.test_accuracy:.4f}" if er.test_accuracy is not None else ""))
        if out:
            with open(result.metrics_path, "a") as f:
                f.write(json.dumps(er.__dict__) + "\n")
    if out and result.epochs:
        plot_metrics(result.metrics_path, result.plot_path)
    return result


def committed_shards(plans: Sequence[ShardPlan], reports: Sequence[dict], *, where: str
                     ) -> tuple[list[ShardPlan], list[Written]]:
    """The shards the reducers reported, one per plan, as the plans (under the written file
    names) and write results that :func:`staged_manifest` checks in storage."""
    by_plan: dict[str, dict] = {}
    for r in reports:
        if not isinstance(r, dict) or r.get("plan") in by_plan:
            raise FormatError(f"{where}: a reducer's shard report is malformed or repeated: {str(r)[:200]!r}")
        by_plan[r["plan"]] = r
    missing = [p.filename for p in plans if p.filename not in by_plan]
    if missing or len(by_plan) != len(plans):
        raise FormatError(f"{where}: the job wrote {len(by_plan)} shards of the {len(plans)} planned "
                          f"(missing {missing[:3]}); nothing was committed")
    shards, written = [], []
    for plan in plans:
        r = by_plan[plan.filename]
        try:
            w = Written(r["size"], r["sha256"], {k: tuple(v) for k, v in r["offsets"].items()},
                        Checksums.from_json(r["checksums"], size=r["size"]))
            file = str(r["file"])
            if not file.endswith(".safetensors") or "/" in file or file.startswith("."):
                raise ValueError(f"file name {file!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{where}: the report of shard {plan.filename} is malformed ({e})") from e
        if set(w.offsets) != {p.key for p in plan.pieces}:
            raise FormatError(f"{where}: shard {file} does not hold the tensors planned for {plan.filename}")
        shards.append(ShardPlan(file, plan.pieces))
        written.append(w)
    return shards, written


def plot_metrics(metrics_path: str, plot_path: str) -> None:
    """Loss and accuracy curves of ``metrics.jsonl`` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path) as f:
        rows = [json.loads(line) for line in f]
    epochs = [r["epoch"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, [r["loss"] for r in rows], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax2.plot(epochs, [r["accuracy"] for r in rows], marker="o", label="train")
    if any(r.get("test_accuracy") is not None for r in rows):
        ax2.plot(epochs, [r.get("test_accuracy") for r in rows], marker="s", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(plot_path, dpi=100)
    plt.close(fig)
