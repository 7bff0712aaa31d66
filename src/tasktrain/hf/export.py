"""``save_pretrained(ckpt, out)``: a checkpoint of an ``HFTask`` run as a ``from_pretrained`` directory."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from tasktrain.hf._models import SPEC_KEYS, load_model


def save_pretrained(
    ckpt: str,
    out: str | os.PathLike[str],
    *,
    prefix: str = "model.",
    spec: Mapping[str, Any] | None = None,
    weights: str = "model",
) -> str:
    """Write the model of checkpoint ``ckpt`` (any strategy's, sharded included) as a Hugging Face directory.

    The directory holds ``config.json`` and safetensors weights under transformers' own key
    names (tied weights as transformers ties them), written by the model's own
    ``save_pretrained``, so ``AutoModel*.from_pretrained(out)`` loads the trained weights with
    nothing missing or unexpected. A PEFT (LoRA) model is written as its adapter directory
    (``adapter_config.json``, ``adapter_model.safetensors``) for ``PeftModel.from_pretrained``.

    Args:
        ckpt: a checkpoint directory (or URL) of an :class:`~tasktrain.hf.HFTask` run.
        out: the local directory to write.
        prefix: where the model sits in the module's state dict (``HFTask``: ``"model."``).
        spec: the model spec (``{"class": ..., "config": {...}}``) when the checkpoint's
            hparams hold none (a TaskModule of your own that wraps a transformers model).
        weights: ``"model"`` (the trained weights) or ``"ema"`` (the EMA callback's averages).

    Returns:
        ``out``, as a string.

    Example:
        >>> save_pretrained("runs/checkpoints/step=00000300", "exported")  # doctest: +SKIP
        >>> AutoModelForSequenceClassification.from_pretrained("exported")  # doctest: +SKIP
    """
    from tasktrain.checkpoint.format import read_state, read_weights_of
    from tasktrain.checkpoint.storage import verify

    verify(ckpt)
    if spec is None:
        spec = _spec_of(read_state(ckpt).get("hparams", {}), ckpt)
    saved = read_weights_of(ckpt, weights)
    model_weights = {name[len(prefix) :]: t for name, t in saved.items() if name.startswith(prefix)}
    if not model_weights:
        raise ValueError(
            f"save_pretrained({ckpt!r}): no weights start with prefix={prefix!r}; the checkpoint holds "
            f"{sorted(saved)[:5]}..."
        )
    model = load_model(dict(spec), None, None, None)
    missing, unexpected = model.load_state_dict(model_weights, strict=False)
    if spec.get("pretrained") is not None:  # adapter-only checkpoint: the frozen base came from its directory
        frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
        missing = [name for name in missing if name not in frozen]
    if missing or unexpected:
        raise ValueError(
            f"save_pretrained({ckpt!r}): the checkpoint's weights do not fit {spec['class']}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    path = os.fspath(out)
    if "://" in path:
        raise ValueError(
            f"save_pretrained(out={path!r}): transformers writes local directories; export to a local path "
            "and copy the folder (e.g. with fsspec's put) to the URL"
        )
    model.save_pretrained(path)  # type: ignore[operator]  # PEFT: the adapter only
    return path


def _spec_of(hparams: Mapping[str, Any], ckpt: str) -> Mapping[str, Any]:
    spec = hparams.get("model")
    if not (isinstance(spec, Mapping) and {"class", "config"} <= set(spec)):
        raise ValueError(
            f"save_pretrained({ckpt!r}): the checkpoint's hparams hold no transformers model spec "
            f"(hparams['model'] with keys {list(SPEC_KEYS)[:2]}), so it was not written by an HFTask run; "
            "pass spec={'class': ..., 'config': {...}} (and prefix=) for a module of your own"
        )
    return spec
