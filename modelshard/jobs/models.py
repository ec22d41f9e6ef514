"""Model specs and the registry of model factories.

A spec names a *registered* factory plus its keyword arguments, small enough to travel in a
job config and to be stored in a manifest's metadata. A manifest is data written by whoever
can write the catalog, so it never chooses code to import: factories come from the
built-ins (:data:`BUILTINS`: ``mlp``, and ``transformers``, :mod:`modelshard.jobs.hf`) and
from the entry points in group ``modelshard.models`` of installed packages. Importing any
other ``module:function`` needs ``trust_code=True`` (``--trust-code``), given per invocation.

A factory is called with the spec's kwargs; one that declares a keyword-only ``assets``
parameter also gets the version's non-tensor files (``assets.names``, ``assets.read(name)``,
``assets.folder()``; each read checked), as the ``transformers`` factory reads config.json.
A factory may carry ``load_state(model, state, key=...)`` to load the version's tensors its
own way; by default they must match the module's ``state_dict`` exactly.

>>> spec = ModelSpec.parse('{"factory": "mlp", "kwargs": {"sizes": [4, 3]}}')
>>> build(spec)
Sequential(
  (0): Linear(in_features=4, out_features=3, bias=True)
)
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from modelshard.errors import UsageError
from modelshard.jobs.hf import transformers_model

if TYPE_CHECKING:  # torch is imported where a model is built: the CLI starts without it
    from torch import nn

ENTRY_POINT_GROUP = "modelshard.models"
SPEC_ATTR = "model.spec"  # the manifest attr that holds a version's spec (ModelSpec.dumps)


@dataclass(frozen=True)
class ModelSpec:
    factory: str  # a registered name ("mlp"), or "package.module:function" with trust_code
    kwargs: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
            factory, kwargs = data["factory"], dict(data.get("kwargs", {}))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise UsageError(
                f"model spec {text[:200]!r} is not JSON of the form "
                '{"factory": "NAME", "kwargs": {...}}'
            ) from e
        if not isinstance(factory, str) or not all(isinstance(k, str) for k in kwargs):
            raise UsageError(f"model spec {text[:200]!r}: the factory and the kwargs' keys must be strings")
        return cls(factory=factory, kwargs=kwargs)

    @classmethod
    def from_text(cls, text: str) -> ModelSpec:
        """A spec as the command line gives it (``push --model``, ``train --init``): JSON
        ``{"factory": ..., "kwargs": ...}``, or ``FACTORY[:KWARGS]`` where KWARGS is a JSON
        object or ``key=value,...`` (values read as JSON where they parse, else strings)::

            mlp:64,64,10    transformers    transformers:head=sequence-classification,dtype=bfloat16
        """
        text = text.strip()
        if text.startswith("{"):
            return cls.parse(text)
        name, sep, rest = text.partition(":{") if ":{" in text else text.rpartition(":")
        rest = "{" + rest if sep == ":{" else rest
        if not sep:
            return cls(text)
        if rest.startswith("{"):
            try:
                kwargs = json.loads(rest)
            except (ValueError, RecursionError) as e:
                raise UsageError(f"model spec {text[:200]!r}: the kwargs after ':' are not JSON ({e})") from None
            if not isinstance(kwargs, dict):
                raise UsageError(f"model spec {text[:200]!r}: the kwargs after ':' must be a JSON object")
            return cls(name, kwargs)
        if name == "mlp":
            try:
                return cls("mlp", {"sizes": [int(x) for x in rest.split(",")]})
            except ValueError:
                raise UsageError(f"model spec {text!r}: write mlp:IN,HIDDEN,...,OUT with whole numbers") from None
        if re.fullmatch(r"[A-Za-z_]\w*=[^,]*(,[A-Za-z_]\w*=[^,]*)*", rest):
            return cls(name, {k: _value(v) for k, _, v in (kv.partition("=") for kv in rest.split(","))})
        return cls(text)  # a module:function, which only --trust-code builds

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def mlp(*, sizes: list[int], seed: int = 0) -> nn.Module:
    """The built-in multi-layer perceptron: Linear layers of ``sizes`` with ReLU between."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


# name -> factory; the import path is accepted too, so manifests written before the
# registry ("modelshard.jobs.models:mlp") keep working.
BUILTINS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, f"{__name__}:mlp": mlp,
                                                 "transformers": transformers_model}


def factory(name: str, *, trust_code: bool = False) -> Callable[..., nn.Module]:
    """The factory that ``name`` means: a built-in, then an installed entry point (by its
    name or by its ``module:function`` value); any other ``module:function`` only with
    ``trust_code``. Raises UsageError saying how to register it otherwise."""
    if name in BUILTINS:
        return BUILTINS[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if name in (ep.name, ep.value):
            try:
                return ep.load()
            except Exception as e:  # an installed package's import error, whatever it is
                raise UsageError(f"model factory {name!r} (entry point {ep.value} of group "
                                 f"{ENTRY_POINT_GROUP}) cannot be loaded: {e}") from e
    if not trust_code:
        raise UsageError(
            f"model factory {name!r} is not registered: register it as an entry point of group "
            f"{ENTRY_POINT_GROUP!r} in an installed package (e.g. in setup.cfg [options.entry_points] "
            f"{ENTRY_POINT_GROUP} = mynet = mypkg.models:mynet) and name it in the spec, or pass "
            "--trust-code (trust_code=True) to import it from this spec")
    module_name, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise UsageError(f"model factory {name!r} cannot be imported: {e}") from e


def takes_assets(make: Callable) -> bool:
    """Whether a factory declares the keyword-only ``assets`` parameter."""
    try:
        param = inspect.signature(make).parameters.get("assets")
    except (TypeError, ValueError):
        return False
    return param is not None and param.kind == inspect.Parameter.KEYWORD_ONLY


def build(spec: ModelSpec, *, trust_code: bool = False, assets: Any = None) -> nn.Module:
    """Instantiate the module a spec names (see :func:`factory` for which names are allowed);
    ``assets``: the version's files, for a factory that takes them."""
    from torch import nn

    make = factory(spec.factory, trust_code=trust_code)
    kwargs = dict(spec.kwargs)
    if takes_assets(make):
        if "assets" in kwargs:
            raise UsageError(f"model spec of factory {spec.factory!r}: 'assets' is not a kwarg; "
                             "the factory gets the version's files")
        if assets is None:
            raise UsageError(f"model factory {spec.factory!r} builds from the version's files; "
                             "build it from a catalog version (modelshard.jobs.modelio.load_model)")
        kwargs["assets"] = assets
    try:
        model = make(**kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(f"model factory {spec.factory!r} rejected its arguments {spec.kwargs}: {e}") from e
    if not isinstance(model, nn.Module):
        raise UsageError(f"model factory {spec.factory!r} returned a {type(model).__name__}, "
                         "not a torch.nn.Module; fix the factory")
    return model


def load_weights(spec: ModelSpec, model: nn.Module, state: dict[str, Any], *, key: str,
                 trust_code: bool = False) -> None:
    """Load the version's tensors into ``model`` (built from ``spec``): the factory's own
    ``load_state`` if it has one, else exactly its ``state_dict``."""
    load = getattr(factory(spec.factory, trust_code=trust_code), "load_state", None)
    if load is not None:
        load(model, state, key=key)
        return
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise UsageError(f"weights of {key} do not fit its model spec: {' '.join(str(e).split())[:500]}") from e
