"""Model specs: a dotted path to a factory plus its keyword arguments, small enough to
travel in a job config and to be stored in a manifest's metadata.

>>> spec = ModelSpec.parse('{"factory": "modelshard.jobs.models:mlp", "kwargs": {"sizes": [4, 3]}}')
>>> build(spec)
Sequential(
  (0): Linear(in_features=4, out_features=3, bias=True)
)
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from modelshard.errors import UsageError


@dataclass(frozen=True)
class ModelSpec:
    factory: str  # "package.module:function"
    kwargs: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
            return cls(factory=data["factory"], kwargs=dict(data.get("kwargs", {})))
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(
                f"model spec {text!r} is not JSON of the form "
                '{"factory": "pkg.module:function", "kwargs": {...}}'
            ) from e

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def mlp(*, sizes: list[int], seed: int = 0) -> nn.Module:
    """The built-in multi-layer perceptron: Linear layers of ``sizes`` with ReLU between."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:], strict=False)):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


def build(spec: ModelSpec) -> nn.Module:
    """Instantiate the module a spec names."""
    module_name, _, attr = spec.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise UsageError(f"model factory {spec.factory!r} cannot be imported: {e}") from e
    try:
        return factory(**spec.kwargs)
    except TypeError as e:
        raise UsageError(f"model factory {spec.factory!r} rejected its arguments {spec.kwargs}: {e}") from e
