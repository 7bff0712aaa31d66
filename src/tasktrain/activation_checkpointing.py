"""``apply_activation_checkpointing``: trade compute for memory by recomputing layers in backward."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from torch import nn

#: Which layers to checkpoint: module classes, or a predicate on the module.
LayerSelector: TypeAlias = type[nn.Module] | tuple[type[nn.Module], ...] | Callable[[nn.Module], bool]


def apply_activation_checkpointing(module: nn.Module, layers: LayerSelector) -> list[str]:
    """Wrap every submodule selected by ``layers`` so its activations are recomputed in backward.

    A wrapped layer keeps only its inputs during forward and runs its forward again during
    backward (torch's non-reentrant ``checkpoint_wrapper``): activation memory drops to about
    one layer's worth, at the cost of one extra forward per layer. Gradients are unchanged.
    Parameter names in ``state_dict`` stay the same, so checkpoints are interchangeable with
    an unwrapped model's. Layers nested in a selected layer, and layers already wrapped (a
    second call, e.g. ``configure_model`` run by a second Trainer), are not wrapped again.

    Call it in ``TaskModule.configure_model``: the strategy wraps or shards the module after
    that hook, which is the order FSDP2 wants (checkpoint the blocks, then ``fully_shard`` them),
    and ``Trainer(compile=...)`` then compiles the wrapped blocks.

    Args:
        module: the model to modify in place (its root is never wrapped).
        layers: a module class, a tuple of classes, or a predicate ``f(submodule) -> bool``.

    Returns:
        The names of the submodules wrapped by this call.

    Raises:
        ValueError: no submodule matched ``layers``.

    Example:
        >>> class Net(tt.TaskModule):  # doctest: +SKIP
        ...     def configure_model(self):
        ...         apply_activation_checkpointing(self, layers=nn.TransformerEncoderLayer)
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        _CHECKPOINT_WRAPPED_MODULE,
        CheckpointWrapper,
        checkpoint_wrapper,
    )

    selected = _selector(layers)
    names: list[str] = []
    already = False  # configure_model may run once per Trainer: wrapping again is a no-op
    for name, submodule in module.named_modules():
        if not name or any(name.startswith(f"{done}.") for done in names):
            continue
        if isinstance(submodule, CheckpointWrapper) or _CHECKPOINT_WRAPPED_MODULE in name.split("."):
            already = already or selected(submodule)
            continue
        if selected(submodule):
            names.append(name)
    if not names and not already:
        kinds = sorted({type(m).__name__ for m in module.modules()})
        raise ValueError(
            f"apply_activation_checkpointing(layers={layers!r}): no submodule of {type(module).__name__} "
            f"matched; its submodule types are {kinds}"
        )
    for name in names:
        parent_name, _, child_name = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        setattr(parent, child_name, checkpoint_wrapper(parent.get_submodule(child_name)))
    return names


def _selector(layers: LayerSelector) -> Callable[[nn.Module], bool]:
    if isinstance(layers, type) or (isinstance(layers, tuple) and all(isinstance(t, type) for t in layers)):
        classes = layers
        return lambda m: isinstance(m, classes)
    if callable(layers):
        return layers
    raise TypeError(
        f"apply_activation_checkpointing(layers={layers!r}): accepted values are a module class, a tuple "
        "of module classes, or a function of a module returning bool"
    )
