"""Model specs and the registry of model factories.

A spec names a *registered* factory plus its keyword arguments, small enough to travel in a
job config and to be stored in a manifest's metadata. A manifest is data written by whoever
can write the catalog, so it never chooses code to import: factories come from the
built-ins (:data:`BUILTINS`) and from the entry points in group ``modelshard.models`` of
installed packages. Importing any other ``module:function`` needs ``trust_code=True``
(``--trust-code``), given per invocation.

>>> spec = ModelSpec.parse('{"factory": "mlp", "kwargs": {"sizes": [4, 3]}}')
>>> build(spec)
Sequential(
  (0): Linear(in_features=4, out_features=3, bias=True)
)
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from modelshard.errors import UsageError

if TYPE_CHECKING:  # torch is imported where a model is built: the CLI starts without it
    from torch import nn

ENTRY_POINT_GROUP = "modelshard.models"


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

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


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
BUILTINS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, f"{__name__}:mlp": mlp}


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


def build(spec: ModelSpec, *, trust_code: bool = False) -> nn.Module:
    """Instantiate the module a spec names (see :func:`factory` for which names are allowed)."""
    from torch import nn

    make = factory(spec.factory, trust_code=trust_code)
    try:
        model = make(**spec.kwargs)
    except (TypeError, ValueError) as e:
        raise UsageError(f"model factory {spec.factory!r} rejected its arguments {spec.kwargs}: {e}") from e
    if not isinstance(model, nn.Module):
        raise UsageError(f"model factory {spec.factory!r} returned a {type(model).__name__}, "
                         "not a torch.nn.Module; fix the factory")
    return model
