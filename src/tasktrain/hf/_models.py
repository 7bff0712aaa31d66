"""Hugging Face models as plain data: build one from a directory, an instance or a JSON spec, and back.

A *model spec* is what ``HFTask`` keeps in ``hparams`` (and so in every checkpoint)::

    {"class": "BertForSequenceClassification", "config": {...config.json...},
     "peft_config": {...adapter_config.json...} | None,
     "pretrained": "/abs/model/dir"}   # only for adapter-only checkpoints: where the frozen base is

It rebuilds the architecture with random weights (the checkpoint's weights are loaded after),
without the directory the run started from. ``transformers`` is imported here, on use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

SPEC_KEYS = ("class", "config", "peft_config", "pretrained")


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (without importing peft when it is not loaded)."""
    return any(
        cls.__name__ == "PeftModel" and cls.__module__.startswith("peft") for cls in type(model).__mro__
    )


def base_model_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT model (``model`` itself otherwise)."""
    return model.get_base_model() if is_peft_model(model) else model  # type: ignore[operator]


def load_model(
    model: Any, auto_class: str | None, model_kwargs: Mapping[str, Any] | None, peft_config: Any
) -> nn.Module:
    """The model ``HFTask(model=...)`` names: an instance (used as is), a local directory, or a spec."""
    if isinstance(model, nn.Module):
        built = model
    elif isinstance(model, (str, os.PathLike)):
        built = _from_directory(str(model), auto_class, dict(model_kwargs or {}))
    elif isinstance(model, Mapping):
        built = from_spec(model)
        peft_config = peft_config if peft_config is not None else model.get("peft_config")
    else:
        raise TypeError(
            f"HFTask(model={type(model).__name__}): accepted are a transformers PreTrainedModel, a local "
            "model directory (str or path), or a model spec dict {'class': ..., 'config': {...}}"
        )
    _check_pretrained(base_model_of(built))
    if peft_config is not None and not is_peft_model(built):
        built = _apply_peft(built, peft_config)
    return built


def to_spec(model: nn.Module) -> dict[str, Any]:
    """The plain-JSON spec that rebuilds ``model``'s architecture (see the module docstring)."""
    base: Any = base_model_of(model)
    config = json.loads(base.config.to_json_string(use_diff=False))
    spec: dict[str, Any] = {"class": type(base).__name__, "config": config, "peft_config": None}
    if is_peft_model(model):
        spec["peft_config"] = peft_config_dict(model)
    return spec


def peft_config_dict(model: Any) -> dict[str, Any]:
    """The active adapter's config of a PEFT model, as plain JSON."""
    config = model.peft_config[model.active_adapter]
    return json.loads(json.dumps(config.to_dict(), default=_jsonable))


def from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Build the architecture ``spec`` describes, with random weights (no download, no directory)."""
    import transformers

    missing = [key for key in ("class", "config") if key not in spec]
    if missing:
        raise ValueError(
            f"HFTask(model={{...}}): a model spec needs the keys 'class' and 'config'; {missing} missing"
        )
    name = spec["class"]
    cls = getattr(transformers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(
            f"HFTask(model={{'class': {name!r}, ...}}): not a model class of transformers; give a class "
            "name such as 'BertForSequenceClassification', or a model directory or instance"
        )
    config_dict = dict(spec["config"])
    config_cls: Any = cls.config_class
    config = config_cls.from_dict(config_dict)
    pretrained = spec.get("pretrained")
    if pretrained is not None:  # the frozen base of adapter-only checkpoints: its weights from there
        if not os.path.isdir(pretrained):
            raise FileNotFoundError(
                f"the checkpoint's adapters were trained on the base model in {pretrained!r}, which is gone; "
                "checkpoints with adapter_only_checkpoints=True need it to rebuild the model"
            )
        return cls.from_pretrained(pretrained, config=config, local_files_only=True)  # type: ignore[no-any-return,unused-ignore]
    model = cls(config)
    model.eval()  # from_pretrained's mode; the Trainer switches to train mode for fitting
    return model


def _from_directory(path: str, auto_class: str | None, kwargs: dict[str, Any]) -> nn.Module:
    import transformers

    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"HFTask(model={path!r}): no such local directory (models are not downloaded; save one with "
            "save_pretrained() and pass its path)"
        )
    cls: Any
    if auto_class is not None:
        cls = getattr(transformers, auto_class, None)
        if cls is None or not hasattr(cls, "from_pretrained"):
            raise ValueError(
                f"HFTask(auto_class={auto_class!r}): not a transformers Auto class or model class "
                "(e.g. 'AutoModelForSequenceClassification')"
            )
    else:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        archs = getattr(config, "architectures", None) or []
        cls = getattr(transformers, archs[0], None) if archs else None
        if cls is None:
            raise ValueError(
                f"HFTask(model={path!r}): its config.json names no known architecture ({archs}); pass "
                "auto_class='AutoModelFor...'"
            )
    return cls.from_pretrained(path, local_files_only=True, **kwargs)  # type: ignore[no-any-return,unused-ignore]


def _check_pretrained(model: nn.Module) -> None:
    import transformers

    if not isinstance(model, transformers.PreTrainedModel):
        raise TypeError(
            f"HFTask(model=...): a {type(model).__name__} is not a transformers PreTrainedModel; "
            "wrap other models in your own TaskModule"
        )


def _apply_peft(model: nn.Module, peft_config: Any) -> nn.Module:
    import peft

    if isinstance(peft_config, Mapping):
        peft_config = peft.get_peft_config(dict(peft_config))
    if not isinstance(peft_config, peft.PeftConfig):
        raise TypeError(
            f"HFTask(peft_config={type(peft_config).__name__}): accepted are a peft config (e.g. LoraConfig) or "
            "its dict (e.g. {'peft_type': 'LORA', 'r': 8, 'target_modules': ['query', 'value']})"
        )
    return peft.get_peft_model(model, peft_config)  # type: ignore[arg-type,unused-ignore]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "value"):  # enums (peft's TaskType, PeftType)
        return value.value
    return str(value)
