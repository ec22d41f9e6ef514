"""A served version's model: built once without weights, run over the weights a batch holds.

The module is built from the version's spec as ``predict`` builds it
(:func:`~modelshard.jobs.modelio.model_spec`, registered factories only unless
``trust_code``), on torch's meta device, so it holds no memory of its own (a module whose
non-persistent buffers, such as position ids, cannot be made on the meta device is built
once for real and its weights dropped). Each batch binds the held tensors to it with
:func:`torch.func.functional_call` under the version's lock, and the batch's records go
through the same :class:`~modelshard.jobs.predict.task.Predictor` as the batch job's, so inputs
and outputs are exactly ``predict``'s.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from modelshard.errors import ModelShardError, StorageError, UsageError
from modelshard.jobs import hf
from modelshard.jobs.models import build, factory
from modelshard.jobs.predict.task import InputSpec, OutputSpec, Predictor
from modelshard.serve.pool import UnavailableError, records_as_lines

if TYPE_CHECKING:
    from torch import nn

    from modelshard.serve.pool import ModelPool, _Version

_BUILD_LOCK = threading.Lock()  # torch's default-device context is process-wide


class Runner:
    """Runs batches of records through one version's module."""

    def __init__(self, key: str, model: nn.Module, names: dict[str, str], tokenizer_of: Any) -> None:
        self.key = key
        self.model = model
        self.names = names  # module state key -> stored tensor name
        self._dtypes = {k: v.dtype for k, v in model.state_dict(keep_vars=True).items()}
        self._tokenizer_of = tokenizer_of
        self._tokenizer: Any = None
        self._predictors: dict[tuple[InputSpec, OutputSpec], Predictor] = {}
        self._state: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        from torch.func import functional_call

        return functional_call(self.model, self._state, args, kwargs, tie_weights=True, strict=False)

    def _predictor(self, inputs: InputSpec, output: OutputSpec) -> Predictor:
        p = self._predictors.get((inputs, output))
        if p is None:
            if inputs.kind == "text" and self._tokenizer is None:
                self._tokenizer = self._tokenizer_of()
            p = Predictor(self.model, fmt="jsonl", batch_size=1 << 62, inputs=inputs, output=output,
                          tokenizer=self._tokenizer if inputs.kind == "text" else None,
                          forward=self._call)
            self._predictors[(inputs, output)] = p
        return p

    def run(self, tensors: dict[str, Any], records: Sequence[dict], *, inputs: str,
            output: str) -> list[tuple[str, Any]]:
        """Per record ``("ok", value)`` or ``("bad", reason)``; UsageError for options the
        model cannot give (``topk`` above its classes, ``class`` without logits)."""
        in_spec, out_spec = InputSpec.parse(inputs), OutputSpec.parse(output)
        with self._lock:
            p = self._predictor(in_spec, out_spec)
            self._state = {k: _as(tensors[n], self._dtypes[k]) for k, n in self.names.items()}
            try:
                results: list[tuple[str, Any] | None] = [None] * len(records)
                parsed = []
                for i, line in enumerate(records_as_lines(records)):
                    got = p.add(line)
                    if got:  # parsed badly: set aside at once
                        results[i] = ("bad", got[0][1]["error"])
                    else:
                        parsed.append(i)
                for i, (rid, value) in zip(parsed, p.flush(), strict=True):
                    results[i] = ("ok", value) if rid is not None else ("bad", value["error"])
            except (RuntimeError, IndexError, ValueError, TypeError) as e:
                # The predictor gives up on a first batch that fails the same way on every record.
                p.ids, p.rows, p.lines = [], [], []
                reason = f"does not fit the model: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
                return [("bad", reason)] * len(records)
            except UsageError:
                p.ids, p.rows, p.lines = [], [], []
                raise
            finally:
                self._state = {}
        return results  # type: ignore[return-value]


def _as(tensor: Any, dtype: Any) -> Any:
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def runner_for(pool: ModelPool, v: _Version) -> Runner:
    """The version's runner, built at its first batch (UnavailableError if it cannot be: for
    good if the version is at fault, for this batch only if the storage failed)."""
    with v.lock:
        if v.runner is None:
            if v.failure is not None:
                raise UnavailableError(f"{v.key} cannot be served: {v.failure}")
            try:
                v.runner = _build(pool, v)
            except StorageError as e:  # storage failing a moment: the next batch tries again
                raise UnavailableError(f"{v.key} cannot be built now: {e}; retry") from e
            except ModelShardError as e:  # the version itself (spec, weights, assets): for good
                v.failure = e
                raise UnavailableError(f"{v.key} cannot be served: {e}") from e
        return v.runner


def _build(pool: ModelPool, v: _Version) -> Runner:
    import torch

    from modelshard.jobs.modelio import VersionAssets, model_spec

    cat = pool.catalog
    spec = model_spec(cat, v.key, trust_code=pool.trust_code)
    own_loader = getattr(factory(spec.factory, trust_code=pool.trust_code), "load_state", None)
    if own_loader is not None and own_loader is not hf.load_state:
        raise UsageError(f"{v.key}: factory {spec.factory!r} loads its weights its own way "
                         "(load_state); the server binds stored tensors to the module by name only")
    assets = VersionAssets(cat, v.manifest, cache_dir=pool.cache.dir if pool.cache else None)
    with _BUILD_LOCK, torch.device("meta"):
        model = build(spec, trust_code=pool.trust_code, assets=assets)
    if any(b.is_meta for b in _non_persistent(model).values()):
        model = build(spec, trust_code=pool.trust_code, assets=assets)
    keep = _non_persistent(model)
    model = model.to("meta")
    for (module, name), buf in keep.items():
        module._buffers[name] = buf
    names = _names(model, v, hf_names=own_loader is not None)
    return Runner(v.key, model.eval(), names, lambda: hf.tokenizer(assets, key=v.key))


def _non_persistent(model: nn.Module) -> dict[tuple[nn.Module, str], Any]:
    return {(m, n): m._buffers[n] for m in model.modules()
            for n in m._non_persistent_buffers_set if m._buffers.get(n) is not None}


def _names(model: nn.Module, v: _Version, *, hf_names: bool) -> dict[str, str]:
    """Module state key -> stored tensor name; UsageError if a weight would be missing."""
    own = model.state_dict(keep_vars=True)
    stored = list(v.manifest.tensors)
    if hf_names:
        names, _ = hf.state_names(model, stored)
    else:
        names = {n: n for n in stored if n in own}
        extra = sorted(set(stored) - set(own))
        if extra:
            raise UsageError(f"weights of {v.key} do not fit its model spec: unexpected "
                             f"{', '.join(extra[:3])}")
    # A weight tied to one given (an LM head to its embeddings) comes with it.
    given = {id(own[k]) for k in names}
    missing = sorted(k for k, t in own.items() if k not in names and id(t) not in given)
    if missing:
        raise UsageError(f"weights of {v.key} do not fit its model: {len(missing)} missing, e.g. "
                         f"{', '.join(missing[:3])}")
    firsts = {}
    for k, n in names.items():
        firsts.setdefault(id(own[k]), (k, n))
    return dict(firsts.values())
