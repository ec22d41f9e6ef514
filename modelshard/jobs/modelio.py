"""How the streaming tasks read a model (spec and weights) from the catalog.

The spec comes from the manifest, i.e. from whoever can write the catalog, so its factory
must be registered (:mod:`modelshard.jobs.models`) unless the caller passes
``trust_code=True``; the jobs carry that choice to their tasks as the jobconf property
:data:`TRUST_CODE_PROPERTY`, and the tasks refuse without it too.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from modelshard.catalog.catalog import Catalog
from modelshard.errors import UsageError
from modelshard.jobs.models import ModelSpec, build, factory
from modelshard.loading import open as open_model

SPEC_ATTR = "model.spec"
TRUST_CODE_PROPERTY = "modelshard.trust_code"


def trusts_code(value: str | None) -> bool:
    """Whether a task's jobconf value of :data:`TRUST_CODE_PROPERTY` allows any factory."""
    return value == "true"


def model_spec(catalog: Catalog, key: str, *, trust_code: bool = False) -> ModelSpec:
    """The model spec of ``key``, its factory checked to be allowed (drivers call it so that a
    refused spec stops the job before it starts)::

        model_spec(Catalog("/tmp/cat"), "digits@3").factory   # 'mlp'
    """
    manifest = catalog.manifest(*catalog.resolve(key))
    text = manifest.attrs.get(SPEC_ATTR)
    if text is None:
        raise UsageError(f"model {key} has no model spec ({SPEC_ATTR!r} in its manifest attrs); "
                         "create it with 'modelshard train --init SPEC' or push it with attrs")
    spec = ModelSpec.parse(text)
    factory(spec.factory, trust_code=trust_code)
    return spec


def load_model(catalog_uri: str, key: str, *, cache_dir: str | None = None, budget_bytes: int | None = None,
               record_stats: bool = False, progress: Callable[[str], object] | None = None,
               counter: Callable[[str, int], object] | None = None, trust_code: bool = False) -> nn.Module:
    """The torch module of ``key``, built from its spec, its weights read through the lazy
    handle: via the node's preload cache when ``cache_dir`` is given (shards verified into
    it once, then memory-mapped by every task on the node), else by range, every chunk
    checked in the very bytes that are served (one read); ``budget_bytes`` bounds the shards
    held at once (the scheduler).
    ``counter(name, n)`` receives the handle's statistics, for Hadoop counters;
    ``trust_code``: build a factory that is not registered (see :mod:`modelshard.jobs.models`)."""
    catalog = Catalog(catalog_uri)
    model = build(model_spec(catalog, key, trust_code=trust_code), trust_code=trust_code)
    if progress:
        progress(f"fetching weights of {key}")
    with open_model(key, catalog=catalog, cache_dir=cache_dir or None, fill_cache=bool(cache_dir),
                    budget_bytes=budget_bytes, record_stats=record_stats) as handle:
        state = handle.load_state_dict(framework="torch")
        stats = handle.stats()
    if counter:
        counts = {"model bytes read by range": stats.range_bytes, "model shards local": stats.local_shards,
                  "model shards remote": stats.remote_shards,
                  **{f"model shards via {source}": n for source, n in stats.sources.items()}}
        if stats.cache:
            counts.update({"preload cache hits": stats.cache.hits, "preload cache misses": stats.cache.misses})
        for name, n in counts.items():
            counter(name, n)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UsageError(f"weights of {key} do not fit its model spec: {e}") from e
    return model
