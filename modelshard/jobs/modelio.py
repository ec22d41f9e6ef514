"""How the streaming tasks read a model (spec and weights) from the catalog.

The spec comes from the manifest, i.e. from whoever can write the catalog, so its factory
must be registered (:mod:`modelshard.jobs.models`) unless the caller passes
``trust_code=True``; the jobs carry that choice to their tasks as the jobconf property
:data:`TRUST_CODE_PROPERTY`, and the tasks refuse without it too.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from modelshard.catalog.catalog import Catalog
from modelshard.catalog.fetch import read_asset
from modelshard.catalog.manifest import Manifest
from modelshard.errors import UsageError
from modelshard.jobs.hf import CONFIG
from modelshard.jobs.models import SPEC_ATTR, ModelSpec, build, factory, load_weights
from modelshard.loading import open as open_model
from modelshard.loading import open_cache

if TYPE_CHECKING:
    from torch import nn

TRUST_CODE_PROPERTY = "modelshard.trust_code"
# A version without a spec but with a Hugging Face config.json is built by this factory.
DEFAULT_HF_SPEC = ModelSpec("transformers")


def trusts_code(value: str | None) -> bool:
    """Whether a task's jobconf value of :data:`TRUST_CODE_PROPERTY` allows any factory."""
    return value == "true"


def spec_of(manifest: Manifest) -> ModelSpec | None:
    """The model spec a version records, else the ``transformers`` one if it has a
    config.json; None if neither."""
    text = manifest.attrs.get(SPEC_ATTR)
    if text is not None:
        return ModelSpec.parse(text)
    return DEFAULT_HF_SPEC if CONFIG in manifest.assets else None


def model_spec(catalog: Catalog, key: str, *, trust_code: bool = False) -> ModelSpec:
    """The model spec of ``key``, its factory checked to be allowed (drivers call it so that a
    refused spec stops the job before it starts)::

        model_spec(Catalog("/tmp/cat"), "digits@3").factory   # 'mlp'
    """
    spec = spec_of(catalog.manifest(*catalog.resolve(key)))
    if spec is None:
        raise UsageError(f"model {key} has no model spec ({SPEC_ATTR!r} in its manifest attrs) and "
                         f"no {CONFIG}; push it with --model FACTORY (e.g. --model mlp:64,64,10), "
                         "push its Hugging Face folder, or create it with 'modelshard train --init SPEC'")
    factory(spec.factory, trust_code=trust_code)
    return spec


class VersionAssets:
    """The non-tensor files of one version, for factories and tokenizers: each read checked
    (through the node's preload cache when there is one); :meth:`folder` writes them all
    into a private local folder once, for loaders that want paths."""

    def __init__(self, catalog: Catalog, manifest: Manifest, *, cache_dir: str | None = None) -> None:
        self._catalog, self._manifest = catalog, manifest
        self._cache = open_cache(cache_dir, None) if cache_dir else None
        self.names = sorted(manifest.assets)
        self._folder: tempfile.TemporaryDirectory | None = None
        self._lock = threading.Lock()

    def read(self, name: str) -> bytes:
        return read_asset(self._catalog, self._manifest, name, cache=self._cache)

    def folder(self) -> str:
        with self._lock:
            if self._folder is None:
                folder = tempfile.TemporaryDirectory(prefix="modelshard-assets-")
                for name in self.names:
                    path = os.path.join(folder.name, *name.split("/"))
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "wb") as f:
                        f.write(self.read(name))
                self._folder = folder
            return self._folder.name


def load_model(catalog_uri: str, key: str, *, cache_dir: str | None = None, budget_bytes: int | None = None,
               record_stats: bool = False, progress: Callable[[str], object] | None = None,
               counter: Callable[[str, int], object] | None = None, trust_code: bool = False,
               assets: VersionAssets | None = None) -> nn.Module:
    """The torch module of ``key``, built from its spec (and, for a factory that takes them,
    its assets: ``assets``, else read here), its weights read through the lazy handle: via
    the node's preload cache when ``cache_dir`` is given (shards verified into it once, then
    memory-mapped by every task on the node), else by range, every chunk checked in the very
    bytes that are served (one read); ``budget_bytes`` bounds the shards held at once (the
    scheduler).
    ``counter(name, n)`` receives the handle's statistics, for Hadoop counters;
    ``trust_code``: build a factory that is not registered (see :mod:`modelshard.jobs.models`)."""
    catalog = Catalog(catalog_uri)
    manifest = catalog.manifest(*catalog.resolve(key))
    spec = model_spec(catalog, key, trust_code=trust_code)
    model = build(spec, trust_code=trust_code,
                  assets=assets or VersionAssets(catalog, manifest, cache_dir=cache_dir))
    if progress:
        progress(f"fetching weights of {key}")
    with open_model(key, catalog=catalog, cache_dir=cache_dir or None, fill_cache=bool(cache_dir),
                    budget_bytes=budget_bytes, record_stats=record_stats) as handle:
        # The model's tensors: a trained version's optimizer state stays out by default.
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
    load_weights(spec, model, state, key=key, trust_code=trust_code)
    return model
