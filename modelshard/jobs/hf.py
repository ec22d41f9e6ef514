"""The built-in ``transformers`` model factory: a Hugging Face model built from the version's
own ``config.json`` (an asset, read verified), its weights loaded by modelshard from the
version's shards. Nothing is fetched from a hub and no code is taken from the data: the
configuration only picks among the classes of the installed ``transformers`` package, its
``auto_map`` (custom code) is dropped, and ``trust_remote_code`` is always False.

Spec kwargs (``push --model 'transformers:head=sequence-classification'``):

* ``head``: ``auto`` (default: the class the config's ``architectures`` names, if the
  installed transformers has it, else the base model), a task from :data:`HEADS`, or a
  class name of the installed transformers (``BertForMaskedLM``);
* ``dtype``: the parameters' dtype in memory, ``float32`` (default), ``bfloat16`` or
  ``float16``; weights stored in another dtype are cast as they are loaded.

``transformers`` and ``tokenizers`` are imported only when such a model is built.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from modelshard.errors import FormatError, UsageError

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

CONFIG = "config.json"
# Files a Hugging Face tokenizer is loaded from; one of them must be among the assets.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model", "vocab.json")
HEADS = {
    "base": "AutoModel",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "masked-lm": "AutoModelForMaskedLM",
    "causal-lm": "AutoModelForCausalLM",
    "multiple-choice": "AutoModelForMultipleChoice",
}
DTYPES = ("float32", "bfloat16", "float16")


class Assets(Protocol):
    """What a factory that takes ``assets`` gets: the version's non-tensor files, each read
    checked (:class:`modelshard.jobs.modelio.VersionAssets`)."""

    names: list[str]

    def read(self, name: str) -> bytes: ...
    def folder(self) -> str: ...


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise UsageError(f"the transformers model factory needs the transformers package ({e}); "
                         "pip install 'modelshard[transformers]'") from e
    return transformers


def read_config(assets: Assets, *, key: str = "the version") -> dict:
    """The version's ``config.json`` as a dict (its ``auto_map``, which names custom code to
    download, removed)."""
    if CONFIG not in assets.names:
        raise UsageError(f"{key} has no {CONFIG} asset: the transformers factory builds the model "
                         "from it; push the model's Hugging Face folder with its config.json")
    try:
        config = json.loads(assets.read(CONFIG))
    except (ValueError, RecursionError) as e:
        raise FormatError(f"{key}: {CONFIG} is not JSON ({e}); push a valid config.json") from e
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise FormatError(f"{key}: {CONFIG} has no model_type; push the config.json that "
                          "transformers wrote for the model")
    config.pop("auto_map", None)
    return config


def transformers_model(*, assets: Assets, head: str = "auto", dtype: str = "float32") -> nn.Module:
    """The built-in ``transformers`` factory (see the module's docstring)."""
    import torch

    transformers = _import_transformers()
    config_dict = read_config(assets)
    model_type = config_dict["model_type"]
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise UsageError(f"config.json model_type {model_type!r} is not an architecture of the "
                         f"installed transformers {transformers.__version__}; upgrade transformers "
                         "(custom code from the model folder is never run)")
    if dtype not in DTYPES:
        raise UsageError(f"transformers factory: dtype={dtype!r}; choose one of {', '.join(DTYPES)}")
    config = CONFIG_MAPPING[model_type].from_dict(config_dict)
    cls = _model_class(transformers, head, config_dict)
    try:
        # An Auto class picks the model class by the config's type; a named class is one.
        model = (cls.from_config(config, trust_remote_code=False) if cls.__name__.startswith("Auto")
                 else cls(config))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise UsageError(f"transformers factory: {cls.__name__} cannot be built from config.json "
                         f"({type(e).__name__}: {e}); pick another head") from e
    return model.to(getattr(torch, dtype)).eval()


def _model_class(transformers: Any, head: str, config: dict) -> Any:
    """The transformers class that ``head`` means: a task, a class name, or ``auto``."""
    if head in HEADS:
        return getattr(transformers, HEADS[head])
    names = (config.get("architectures") or []) if head == "auto" else [head]
    for name in names:
        cls = getattr(transformers, name, None) if isinstance(name, str) else None
        # Only model classes of the installed package: data picks among them, never code.
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    if head == "auto":
        return transformers.AutoModel
    raise UsageError(f"transformers factory: head={head!r} is neither one of {', '.join(HEADS)} "
                     "nor a model class of the installed transformers")


def load_state(model: nn.Module, state: dict[str, Any], *, key: str) -> None:
    """Load ``state`` (the version's tensors) into a transformers ``model`` as
    ``from_pretrained`` would: names with or without the base model's prefix (``bert.``),
    weights tied to loaded ones, non-persistent buffers (``position_ids``) and weights the
    head does not use (a pre-training head) left out; any other missing weight is an error,
    never left at random."""
    own = model.state_dict()
    names, unused = state_names(model, state)
    mapped = {key: state[name] for key, name in names.items()}
    missing = set(model.load_state_dict(mapped, strict=False).missing_keys)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    after = model.state_dict()
    loaded = {p.data_ptr() for n, p in after.items() if n in mapped}
    missing = sorted(n for n in missing if after[n].data_ptr() not in loaded)
    if missing:
        raise UsageError(f"weights of {key} do not fit its transformers model "
                         f"{type(model).__name__}: {len(missing)} missing, e.g. {', '.join(missing[:3])}; "
                         "push the folder whose weights match config.json, or choose the head that "
                         "the weights have (push --model 'transformers:head=...')")
    buffers = {n for n, _ in model.named_buffers()} - set(own)
    unused = [n for n in unused if not any(re.search(rf"(^|\.){re.escape(b)}$", n) for b in buffers)]
    if unused:
        log.warning("%s: %d stored tensors are not used by %s, e.g. %s", key, len(unused),
                    type(model).__name__, ", ".join(unused[:3]))


def state_names(model: nn.Module, stored: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """``{module state key: stored name}`` as ``from_pretrained`` matches them (with or
    without the base model's prefix), and the stored names no key takes."""
    own = model.state_dict(keep_vars=True)
    prefix = getattr(model, "base_model_prefix", "") or ""
    mapped, unused = {}, []
    for name in stored:
        for candidate in (name, name.removeprefix(f"{prefix}."), f"{prefix}.{name}"):
            if candidate in own:
                mapped[candidate] = name
                break
        else:
            unused.append(name)
    return mapped, unused


def tokenizer(assets: Assets, *, key: str = "the version") -> Any:
    """The version's own tokenizer, from its assets written to a local folder (no hub, no
    custom code)."""
    if not any(n in assets.names for n in TOKENIZER_FILES):
        raise UsageError(f"{key} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}...) "
                         "among its assets; push the model folder with its tokenizer, or give "
                         "token ids (--input tokens:FIELD)")
    transformers = _import_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(assets.folder(), local_files_only=True,
                                                          trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{key}: its tokenizer cannot be loaded from its assets "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "push the folder that transformers' save_pretrained wrote") from e


# The factory loads its weights with load_state (see modelshard.jobs.models.load_weights).
transformers_model.load_state = load_state  # type: ignore[attr-defined]
