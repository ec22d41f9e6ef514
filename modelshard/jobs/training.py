"""The training driver: one ``mr_train`` pass per epoch, each committing a new version.

Every version records its epoch, model spec and metrics in its manifest attrs, so a
training run that stopped (a failed job, a killed driver) resumes after the last committed
epoch. Metrics go to ``metrics.jsonl`` and ``curves.png`` in ``out_dir``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelshard.catalog.catalog import Catalog
from modelshard.catalog.commit import carry_assets, commit_version, staged_manifest
from modelshard.catalog.keys import LATEST, parse_key
from modelshard.catalog.manifest import Manifest
from modelshard.errors import NotFoundError, UsageError
from modelshard.jobs.config import parse_job_xml, render_job_xml
from modelshard.jobs.hadoop import check_catalog
from modelshard.jobs.launch import input_files, run_job
from modelshard.jobs.modelio import SPEC_ATTR, load_model, model_spec
from modelshard.jobs.models import ModelSpec, build
from modelshard.jobs.shardio import plans_from_reports
from modelshard.jobs.train import Metrics, evaluate
from modelshard.shards.planner import DEFAULT_SHARD_SIZE
from mr_tasks.mr_train import MRTrain

EPOCH_ATTR = "train.epoch"


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
    runner: str = "inline",
    catalog: str | None = None,
    init: ModelSpec | None = None,
    num_reduces: int = 2,
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
    """Train ``key`` on the records under ``data`` up to ``epochs`` epochs::

        train("digits", "hdfs:///data/digits/train", epochs=10, runner="hadoop",
              init=ModelSpec("mlp", {"sizes": [64, 64, 10]}))

    Starts after the newest version's epoch (so a rerun resumes); ``init`` creates the model
    if it does not exist. Each epoch's version gets ``latest``. ``trust_code``: allow a model
    factory that is not registered (driver and tasks import whatever the spec names).
    """
    if epochs < 1:
        raise UsageError(f"epochs={epochs}: train for at least one epoch")
    if num_reduces < 1:
        raise UsageError(f"num_reduces={num_reduces}: training needs at least one reducer")
    cat = Catalog(catalog)
    check_catalog(runner, cat.uri)
    name = parse_key(key).name
    files = input_files(data)
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
            xml = render_job_xml("train", **{
                "job_name": f"modelshard-train {name} epoch {epoch}", "num_maps": len(files),
                "num_reduces": num_reduces, "catalog": cat.uri, "model": f"{name}@{parent}",
                "input": data, "output": "", "format": fmt, "epoch": epoch, "lr": lr,
                "batch_size": batch_size, "seed": epoch * 1000, "staging": cat.fs.uri(staging),
                "trust_code": trust_code, **(job_options or {})})
            job = run_job(MRTrain, runner=runner, inputs=files, output_dir=None, jobconf=parse_job_xml(xml),
                          catalog=cat.uri, python_archive=python_archive, mrjob_conf=mrjob_conf,
                          overrides=overrides, echo=echo)
            reports = [v for k, v in job.output if k == ["shard"]]
            sums = next((v for k, v in job.output if k == ["metrics"]), None)
            if sums is None or not reports:
                raise UsageError(f"epoch {epoch} of {name}: the job produced no weights; is the input empty?")
            run.update(job=job, metrics=Metrics(*sums), bad=[v for k, v in job.output if k is None])
            m = run["metrics"]
            attrs = {SPEC_ATTR: spec.dumps(), EPOCH_ATTR: str(epoch), "train.parent": parent,
                     "train.loss": f"{m.loss:.6g}", "train.accuracy": f"{m.accuracy:.6g}"}
            # Each epoch keeps the model's config and tokenizer files.
            assets = carry_assets(cat, cat.manifest(name, parent), cat.fs, staging, workers=4)
            return staged_manifest(cat, name, new_version, staging, *plans_from_reports(reports),
                                   shard_size=DEFAULT_SHARD_SIZE, workers=4, attrs=attrs, assets=assets)

        version = commit_version(cat, name, None, stage, aliases=[LATEST]).version
        job, metrics, bad = run["job"], run["metrics"], run["bad"]
        er = EpochResult(epoch, version, metrics.loss, metrics.accuracy, metrics.count, len(bad), job.application_id)
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
