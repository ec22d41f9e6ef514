"""The prediction driver: resolves the model and checks the input, and what the records hold
and what to emit, before any job starts, runs ``mr_predict`` and gathers its bad records into
``_bad_records.jsonl`` beside the predictions (files starting with ``_`` are skipped by
Hadoop's input formats)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from modelshard.catalog.catalog import Catalog
from modelshard.errors import AlreadyExistsError, UsageError
from modelshard.fs import get_fs
from modelshard.jobs.config import parse_job_xml, render_job_xml
from modelshard.jobs.hadoop import check_catalog
from modelshard.jobs.hf import TOKENIZER_FILES
from modelshard.jobs.launch import input_files, job_path, run_job
from modelshard.jobs.modelio import model_spec
from modelshard.jobs.parquet import JOB_DIR, check_output_format, discard, publish
from modelshard.jobs.predict.task import InputSpec, OutputSpec
from modelshard.jobs.records import check_format
from mr_tasks.mr_predict import MRPredict

BAD_RECORDS = "_bad_records.jsonl"


@dataclass
class PredictResult:
    model: str  # name@version actually used
    output: str
    records: int
    bad_records: int
    batches: int
    application_id: str | None = None
    tracking_url: str | None = None
    counters: dict = field(default_factory=dict)


def predict(
    key: str,
    data: str,
    output: str,
    *,
    runner: str = "inline",
    catalog: str | None = None,
    fmt: str = "jsonl",
    batch_size: int = 1024,
    cache_dir: str | None = None,
    budget_bytes: int | None = None,
    job_options: dict | None = None,
    overrides: dict[str, str] | None = None,
    python_archive: str | None = None,
    mrjob_conf: bool = True,
    echo: Callable[[str], object] | None = None,
    trust_code: bool = False,
    inputs: str = "features",
    outputs: str = "class",
    output_format: str = "jsonl",
) -> PredictResult:
    """Predict every record under ``data`` with ``key``; predictions land in ``output``
    as lines ``id<TAB>value``, both JSON. ``inputs``: ``features`` (default), ``tokens[:FIELD]``
    or ``text:FIELD`` (tokenized in the tasks by the version's own tokenizer); ``outputs``:
    ``class`` (default), ``scores``, ``topk:K``, ``embedding`` or ``tensor`` (see
    :mod:`modelshard.jobs.predict.task`); ``output_format="parquet"``: Parquet files of ``id`` and
    the output instead (:mod:`modelshard.jobs.parquet`). A record that does not fit the model
    is set aside with its reason in ``_bad_records.jsonl``. ``cache_dir``: the nodes' preload cache, where tasks
    find (or put) the verified shards and assets; ``budget_bytes``: most model bytes a task
    holds; ``trust_code``: allow a model factory that is not registered::

        predict("digits@prod", "hdfs:///data/digits/test", "hdfs:///out/pred", runner="hadoop")
        predict("minilm", "reviews.jsonl", "out", inputs="text:review", outputs="embedding")
    """
    check_format(fmt)
    parquet = check_output_format(output_format) == "parquet"
    input_spec, output_spec = InputSpec.parse(inputs), OutputSpec.parse(outputs)
    if input_spec.kind != "features" and fmt != "jsonl":
        raise UsageError(f"--input {inputs} reads a field of JSON lines; use --format jsonl")
    cat = Catalog(catalog)  # a relative catalog path becomes absolute: tasks run elsewhere
    check_catalog(runner, cat.uri)
    if cache_dir and not os.path.isabs(cache_dir):
        if runner == "hadoop":
            raise UsageError(f"--cache-dir {cache_dir}: give an absolute folder on the nodes' local "
                             "disks; a relative one would land in each task's working folder")
        cache_dir = os.path.abspath(cache_dir)
    name, version = cat.resolve(key)
    model = f"{name}@{version}"  # pin the version: an alias may move while tasks start
    model_spec(cat, model, trust_code=trust_code)
    if input_spec.kind == "text" and not set(TOKENIZER_FILES) & set(cat.manifest(name, version).assets):
        raise UsageError(f"--input {inputs}: {model} has no tokenizer files among its assets; push "
                         "the model's folder with its tokenizer, or give token ids (--input tokens:FIELD)")
    files = input_files(data)
    out_fs, out_path = get_fs(output)
    if out_fs.exists(out_path):
        raise AlreadyExistsError(f"output {output} already exists; remove it or choose another")
    xml = render_job_xml("predict", **{
        "job_name": f"modelshard-predict {model}", "num_maps": len(files), "num_reduces": 0,
        "catalog": cat.uri, "model": model, "input": data, "output": output, "format": fmt,
        "batch_size": batch_size, "cache_dir": cache_dir or "", "budget_bytes": budget_bytes or "",
        "input_spec": inputs, "output_spec": str(output_spec), "output_format": output_format,
        # A task process gets the cores of its container; the inline runner's task is this process.
        "threads": "" if runner == "inline" else 1,
        "trust_code": trust_code, **(job_options or {})})
    job_dir = f"{out_path}/{JOB_DIR}" if parquet else out_path  # Parquet: files named by the driver
    try:
        job = run_job(MRPredict, runner=runner, inputs=files, output_dir=job_path(out_fs, job_dir),
                      jobconf=parse_job_xml(xml), catalog=cat.uri, python_archive=python_archive,
                      mrjob_conf=mrjob_conf, overrides=overrides, echo=echo,
                      keep_prefix=b"null\t")  # bad records and file reports
    except Exception:
        if parquet:
            discard(out_fs, out_path)
        raise
    counts = job.counters.get("modelshard", {})
    bad = [v for k, v in job.output if k is None and "error" in v]
    if bad:
        out_fs.write_bytes(f"{out_path}/{BAD_RECORDS}", "".join(json.dumps(b) + "\n" for b in bad).encode())
    if parquet:
        publish(out_fs, out_path, [v for k, v in job.output if k is None and "parquet" in v])
    return PredictResult(model=model, output=out_fs.uri(out_path), records=counts.get("records", 0),
                         bad_records=counts.get("bad records", 0), batches=counts.get("batches", 0),
                         application_id=job.application_id, tracking_url=job.tracking_url, counters=job.counters)
