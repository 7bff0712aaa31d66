"""``HFTask``: fine-tune any ``transformers`` model with the Trainer, with ``TrainingArguments``' defaults."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

from tasktrain.hf._models import base_model_of, is_peft_model, load_model, to_spec
from tasktrain.module import TaskModule

IGNORE_INDEX = -100  # the label transformers' losses skip
#: Parameter names HF's Trainer never decays (``Trainer.get_decay_parameter_names``), besides LayerNorms.
NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


class HFTask(TaskModule[Mapping[str, Any]]):
    """A ``transformers`` ``PreTrainedModel`` as a TaskModule: dict batches in, ``outputs.loss`` out.

    Batches are dicts of the model's keyword arguments (what a transformers data collator
    returns), with ``labels``. ``count_items`` counts the labels that are not ``-100`` (from the
    second position on for causal LMs, whose loss shifts the labels), so with gradient
    accumulation and data parallelism every optimizer step is the token mean over the whole step,
    whether or not the model's forward accepts ``num_items_in_batch``.

    Optimizer and schedule are those of ``TrainingArguments`` under the same names: AdamW
    (``adam_beta1``, ``adam_beta2``, ``adam_epsilon``) with ``weight_decay`` on every parameter
    but biases and norms, ``lr_scheduler_type`` (``transformers.get_scheduler``; default
    ``"linear"`` decay to 0 over the run's steps) after ``warmup_steps`` (an int, or a fraction
    of the run when below 1, as in transformers 5) or ``warmup_ratio``; gradients are clipped at
    ``max_grad_norm=1.0`` unless the Trainer sets ``gradient_clip_val`` (``max_grad_norm=None``:
    no clipping). ``neftune_noise_alpha`` adds NEFTune noise to the input embeddings in training,
    with the HF Trainer's hook; ``gradient_checkpointing`` recomputes activations in backward.

    ``hparams`` are plain JSON: the model is stored as its spec (class name and config dict, and
    the PEFT config), so ``HFTask.load_from_checkpoint(path)`` rebuilds it without the original
    directory, and ``tasktrain export CKPT OUT --format hf`` writes a ``from_pretrained`` folder.

    Args:
        model: a ``PreTrainedModel`` (or PEFT model) instance, a local model directory, or a spec
            dict ``{"class": "BertForSequenceClassification", "config": {...}}`` (random init).
        auto_class: for a directory: the transformers class that loads it (e.g.
            ``"AutoModelForSequenceClassification"``); default: the architecture in its config.
        model_kwargs: for a directory: keyword arguments of ``from_pretrained`` (e.g. ``num_labels``).
        peft_config: a peft config (e.g. ``LoraConfig``) or its dict, applied to the model.
        adapter_only_checkpoints: for a PEFT model loaded from a directory: checkpoints hold only
            the trainable (adapter) weights, not the frozen base each time; the spec in ``hparams``
            then names the base directory (``"pretrained"``), which rebuilding needs.
        causal_lm: whether the loss shifts the labels by one (default: detected from the model).

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification  # doctest: +SKIP
        >>> task = HFTask(BertForSequenceClassification(BertConfig(num_labels=2)), learning_rate=3e-5)  # doctest: +SKIP
        >>> tt.Trainer(max_epochs=3, accumulate_grad_batches=4).fit(task, loader)  # doctest: +SKIP

    From the command line: ``tasktrain fit --task tasktrain.hf.HFTask --task.model ./my-bert ...``.
    """

    def __init__(
        self,
        model: Any,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.0,
        adam_beta1: float = 0.9,
        adam_beta2: float = 0.999,
        adam_epsilon: float = 1e-8,
        lr_scheduler_type: str = "linear",
        warmup_steps: float = 0,
        warmup_ratio: float = 0.0,
        max_grad_norm: float | None = 1.0,
        neftune_noise_alpha: float | None = None,
        gradient_checkpointing: bool = False,
        auto_class: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        peft_config: Any = None,
        adapter_only_checkpoints: bool = False,
        causal_lm: bool | None = None,
    ) -> None:
        super().__init__()
        _check_options(
            learning_rate, weight_decay, warmup_steps, warmup_ratio, max_grad_norm, neftune_noise_alpha
        )
        self.model = load_model(model, auto_class, model_kwargs, peft_config)
        if gradient_checkpointing:
            _enable_gradient_checkpointing(self.model)
        self.causal_lm = _shifts_labels(self.model) if causal_lm is None else bool(causal_lm)
        self.default_gradient_clip_val = max_grad_norm
        self._neftune_handle: Any = None
        spec = to_spec(self.model)  # plain JSON: the architecture, not a path that may be gone later
        self.adapter_only_checkpoints = adapter_only_checkpoints
        if adapter_only_checkpoints:
            spec["pretrained"] = _base_directory(model, self.model)
        self.hparams.update(
            model=spec,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            adam_beta1=adam_beta1,
            adam_beta2=adam_beta2,
            adam_epsilon=adam_epsilon,
            lr_scheduler_type=lr_scheduler_type,
            warmup_steps=warmup_steps,
            warmup_ratio=warmup_ratio,
            max_grad_norm=max_grad_norm,
            neftune_noise_alpha=neftune_noise_alpha,
            gradient_checkpointing=gradient_checkpointing,
            adapter_only_checkpoints=adapter_only_checkpoints,
            causal_lm=self.causal_lm,
        )

    # -- adapter-only checkpoints: the frozen base is left out of the state dict --------------------
    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The module's state; with ``adapter_only_checkpoints``, without the frozen parameters."""
        state = super().state_dict(*args, **kwargs)
        if self.adapter_only_checkpoints:
            prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
            for name in self._frozen_names():
                state.pop(prefix + name, None)
        return state

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load ``state_dict``; with ``adapter_only_checkpoints`` the frozen parameters may be absent."""
        if not self.adapter_only_checkpoints:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        missing = sorted(set(result.missing_keys) - set(self._frozen_names()))
        if strict and (missing or result.unexpected_keys):
            raise RuntimeError(
                f"HFTask.load_state_dict: missing keys {missing[:5]}, unexpected keys {result.unexpected_keys[:5]}"
            )
        return result

    def _frozen_names(self) -> list[str]:
        return [name for name, param in self.named_parameters() if not param.requires_grad]

    # -- the model ---------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, Any]) -> Any:
        """The model's outputs for a dict batch (``model(**batch)``)."""
        return self.model(**batch)

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, Any]:
        """``outputs.loss`` of the batch (the model's mean over this micro-batch's labels)."""
        outputs = self(batch)
        loss = (
            outputs["loss"]
            if isinstance(outputs, Mapping) and "loss" in outputs
            else getattr(outputs, "loss", None)
        )
        if loss is None:
            raise ValueError(
                f"HFTask: {type(base_model_of(self.model)).__name__} returned no loss for a batch with keys "
                f"{sorted(batch)}; batches need 'labels' (e.g. from a transformers data collator)"
            )
        return loss, outputs

    def count_items(self, batch: Mapping[str, Any]) -> Tensor | None:
        """The labels that count in the loss: not ``-100`` (causal LMs: from the second position on)."""
        labels = batch.get("shift_labels") if "shift_labels" in batch else batch.get("labels")
        if not isinstance(labels, Tensor):
            return None
        if self.causal_lm and "shift_labels" not in batch:
            labels = labels[..., 1:]
        return (labels != IGNORE_INDEX).sum()

    # -- optimizer and schedule ----------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with decay on all but biases and norms, and the ``lr_scheduler_type`` schedule by step."""
        from transformers import get_scheduler

        hp = self.hparams
        decay = set(decay_parameter_names(self.model))
        groups: list[dict[str, Any]] = [
            {"params": [], "weight_decay": hp.weight_decay},
            {"params": [], "weight_decay": 0.0},
        ]
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                groups[0 if name in decay else 1]["params"].append(param)
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=hp.learning_rate,
            betas=(hp.adam_beta1, hp.adam_beta2),
            eps=hp.adam_epsilon,
        )
        if self._trainer is None:
            # Not in a run: the launching process of devices=N only holds the optimizer and the
            # schedule to receive rank 0's state; the lambda of a schedule is not part of it.
            total: int | None = 1
        else:
            total = self.trainer.estimated_stepping_batches
        if total is None and hp.lr_scheduler_type != "constant":
            raise ValueError(
                f"HFTask(lr_scheduler_type={hp.lr_scheduler_type!r}) needs the run's length: give Trainer(max_steps=...) "
                "or a training dataloader with a length"
            )
        warmup = warmup_steps_for(hp.warmup_steps, hp.warmup_ratio, total or 0)
        scheduler = get_scheduler(
            hp.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- tensor parallelism: the model's own plan -------------------------------------------------
    def parallelize(self, mesh: DeviceMesh) -> None:
        """Apply the model's ``config.base_model_tp_plan`` (transformers' own TP plan) over ``mesh``.

        ``"colwise"`` and ``"rowwise"`` layers become torch's ``ColwiseParallel`` and
        ``RowwiseParallel``; the rest (embeddings, norms, the head) stays replicated. Models
        without a plan (BERT, GPT-2) are refused with a message; Llama-style models have one.
        """
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        base: Any = base_model_of(self.model)
        plan = getattr(base.config, "base_model_tp_plan", None) or {}
        styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
        torch_plan = {path: styles[style]() for path, style in plan.items() if style in styles}
        if not torch_plan:
            raise NotImplementedError(
                f"HFTask: {type(base).__name__} has no tensor-parallel plan (config.base_model_tp_plan with "
                "'colwise'/'rowwise' layers); use strategy='ddp' or 'fsdp', or subclass HFTask and override parallelize"
            )
        parallelize_module(getattr(base, base.base_model_prefix), mesh, torch_plan)

    # -- NEFTune: noise on the input embeddings while training, as the HF Trainer adds it ----------
    def on_train_start(self) -> None:
        alpha = self.hparams.neftune_noise_alpha
        if alpha is not None and self._neftune_handle is None:
            from transformers.integrations.neftune import activate_neftune

            self._neftune_handle = activate_neftune(self.model, alpha)

    def on_train_end(self) -> None:
        if self._neftune_handle is not None:
            self._neftune_handle.remove()
            self._neftune_handle = None

    def __getstate__(self) -> dict[str, Any]:  # spawned ranks: the hook handle is not picklable
        state = self.__dict__.copy()
        state["_neftune_handle"] = None
        return state


def decay_parameter_names(model: nn.Module) -> list[str]:
    """The parameters HF's Trainer applies weight decay to: all but LayerNorms, biases and norms."""
    from transformers.trainer_pt_utils import get_parameter_names

    return get_parameter_names(model, [nn.LayerNorm], list(NO_DECAY_PATTERNS))  # type: ignore[no-any-return,unused-ignore]


def warmup_steps_for(warmup_steps: float, warmup_ratio: float, total_steps: int) -> int:
    """``TrainingArguments``' warm-up: ``warmup_steps`` (a fraction of the run when < 1), else ``warmup_ratio``.

    Example:
        >>> warmup_steps_for(0, 0.1, 95), warmup_steps_for(0.1, 0.0, 95), warmup_steps_for(7, 0.5, 95)
        (10, 10, 7)
    """
    if warmup_steps >= 1:
        return int(warmup_steps)
    if warmup_steps > 0:
        return math.ceil(total_steps * warmup_steps)
    return math.ceil(total_steps * warmup_ratio)


def _base_directory(given: Any, model: nn.Module) -> str:
    """The directory of the frozen base, for adapter-only checkpoints (refused otherwise)."""
    if isinstance(given, Mapping) and given.get("pretrained") is not None:  # rebuilt from a checkpoint's spec
        return str(given["pretrained"])
    if not is_peft_model(model) or not isinstance(given, (str, os.PathLike)):
        raise ValueError(
            "HFTask(adapter_only_checkpoints=True) needs a PEFT model (peft_config=...) loaded from a local "
            "directory (model=PATH): checkpoints then hold the adapters, and the base is read from PATH again"
        )
    return os.path.abspath(os.fspath(given))


def _shifts_labels(model: nn.Module) -> bool:
    """Whether the model's loss predicts label ``i + 1`` at position ``i`` (a decoder-only causal LM)."""
    from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    base = base_model_of(model)
    if getattr(getattr(base, "config", None), "is_encoder_decoder", False):
        return False
    causal_names = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if any(cls.__name__ in causal_names for cls in type(base).__mro__):
        return True
    return LOSS_MAPPING.get(str(getattr(base, "loss_type", None))) is ForCausalLMLoss


def _enable_gradient_checkpointing(model: nn.Module) -> None:
    base = base_model_of(model)
    enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
    enable({"use_reentrant": False})  # type: ignore[operator]
    if is_peft_model(model):  # frozen embeddings: the checkpointed blocks still need inputs with grad
        base.enable_input_require_grads()  # type: ignore[operator]


def _check_options(
    learning_rate: float,
    weight_decay: float,
    warmup_steps: float,
    warmup_ratio: float,
    max_grad_norm: float | None,
    neftune_noise_alpha: float | None,
) -> None:
    checks = [
        ("learning_rate", learning_rate, learning_rate >= 0, "a number >= 0"),
        ("weight_decay", weight_decay, weight_decay >= 0, "a number >= 0"),
        ("warmup_steps", warmup_steps, warmup_steps >= 0, "an int >= 0, or a fraction of the run in (0, 1)"),
        ("warmup_ratio", warmup_ratio, 0 <= warmup_ratio <= 1, "a number in [0, 1]"),
        ("max_grad_norm", max_grad_norm, max_grad_norm is None or max_grad_norm > 0, "a number > 0 or None"),
        (
            "neftune_noise_alpha",
            neftune_noise_alpha,
            neftune_noise_alpha is None or neftune_noise_alpha > 0,
            "a number > 0 or None",
        ),
    ]
    for name, value, ok, accepted in checks:
        if not ok:
            raise ValueError(f"HFTask({name}={value!r}): accepted values are {accepted}")


__all__ = ["HFTask", "decay_parameter_names", "warmup_steps_for"]
