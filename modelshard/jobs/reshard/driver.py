"""The resharding driver: a new version of a model with a new shard size or count,
optionally casting floating-point tensors (e.g. F32 to BF16), written in parallel by a
map-only streaming job and committed through the store's one atomic commit path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from modelshard.catalog.catalog import Catalog
from modelshard.catalog.commit import carry_assets, commit_version, staged_manifest
from modelshard.catalog.keys import LATEST
from modelshard.catalog.manifest import Manifest
from modelshard.errors import FormatError
from modelshard.jobs.config import parse_job_xml, render_job_xml
from modelshard.jobs.hadoop import check_catalog
from modelshard.jobs.launch import run_job, task_inputs
from modelshard.jobs.reshard.task import DEFAULT_TASKS, plan_reshard, task_plans
from modelshard.shards.checksums import Checksums
from modelshard.shards.format import Written
from mr_tasks.mr_reshard import MRReshard


def reshard(
    key: str,
    *,
    shard_size: int | None = None,
    shard_count: int | None = None,
    dtype: str | None = None,
    tasks: int = DEFAULT_TASKS,
    runner: str = "inline",
    catalog: str | None = None,
    aliases: Sequence[str] = (),
    with_optimizer_state: bool = False,
    job_options: dict | None = None,
    overrides: dict[str, str] | None = None,
    python_archive: str | None = None,
    mrjob_conf: bool = True,
    echo: Callable[[str], object] | None = None,
) -> Manifest:
    """Write ``key`` as a new version of the same model with new shards; bit-exact unless
    ``dtype`` casts; its assets (config, tokenizer...) are copied, checked. Returns the new
    version's manifest::

        reshard("bert@3", shard_size=64 << 20, dtype="BF16", runner="hadoop")

    With ``shard_count`` the new version has exactly that many shards (UsageError if the
    model has fewer tensors, or pieces of split tensors, than that). A trained version's
    optimizer state (``inner_momentum:*``, ``outer_momentum:*``) is left out (attr ``reshard.optimizer_state``:
    ``dropped``; training from the new version starts its momentum at zero) unless
    ``with_optimizer_state``.
    """
    cat = Catalog(catalog)
    check_catalog(runner, cat.uri)
    name, version = cat.resolve(key)
    source = cat.manifest(name, version)
    kept = source if with_optimizer_state else source.without_optimizer_state()
    size, plans = plan_reshard(kept, shard_size=shard_size, shard_count=shard_count, dtype=dtype)

    def stage(new_version: str, staging: str) -> Manifest:
        with task_inputs(runner, cat.fs, task_plans(plans, tasks=tasks)) as inputs:
            xml = render_job_xml("reshard", **{
                "job_name": f"modelshard-reshard {name}@{version}", "num_maps": len(inputs), "num_reduces": 0,
                "catalog": cat.uri, "model": f"{name}@{version}", "input": "", "output": "",
                "shard_size": size, "dtype": dtype or "", "staging": cat.fs.uri(staging), **(job_options or {})})
            # Resharding tasks never import torch: the slim environment spares the nodes its gigabytes.
            job = run_job(MRReshard, runner=runner, inputs=inputs, output_dir=None, jobconf=parse_job_xml(xml),
                          catalog=cat.uri, flavour="slim", python_archive=python_archive,
                          mrjob_conf=mrjob_conf, overrides=overrides, echo=echo)
        reports = dict(job.output)
        missing = [p.filename for p in plans if p.filename not in reports]
        if missing:
            raise FormatError(f"reshard of {name}@{version}: no task reported {missing[:3]}; the job lost shards")
        try:
            written = [Written(r["size"], r["sha256"], {k: tuple(v) for k, v in r["offsets"].items()},
                               Checksums.from_json(r["checksums"], size=r["size"]))
                       for r in (reports[p.filename] for p in plans)]
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"reshard of {name}@{version}: a task's shard report is malformed ({e})") from e
        attrs = {**source.attrs, "reshard.parent": version}
        if dtype:
            attrs["reshard.dtype"] = dtype
        if kept is not source:
            attrs["reshard.optimizer_state"] = "dropped"
        assets = carry_assets(cat, source, cat.fs, staging, workers=4)
        return staged_manifest(cat, name, new_version, staging, plans, written, shard_size=size,
                               workers=4, attrs=attrs, assets=assets)

    return commit_version(cat, name, None, stage, aliases=[LATEST, *aliases])
