"""Optimizer state keyed by parameter name, for a plain module, without ``torch.distributed.checkpoint``.

Checkpoints keep an optimizer's state as ``torch.distributed.checkpoint.state_dict`` lays it out:
``{"state": {name: {...}}, "param_groups": [{..., "params": [name, ...]}]}``. For a module whose
parameters are plain tensors under their own names (no DTensors, no wrappers that rename them),
that layout is ``optimizer.state_dict()`` with positions replaced by names, so these functions
convert both ways directly. Unlike DCP's helpers they copy no tensor on the CPU and never
materialise state an optimizer does not have: DCP steps a state-less optimizer once with zero
gradients (a full-size gradient per parameter, and state such as AdamW's moments) before saving
or loading it.

Example:
    >>> import torch
    >>> net = torch.nn.Linear(2, 1)
    >>> sgd = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> saved = named_state_dict(net, sgd)
    >>> saved["state"], saved["param_groups"][0]["params"]
    ({}, ['weight', 'bias'])
    >>> load_named_state_dict(net, sgd, saved)
"""

from __future__ import annotations

from typing import Any

from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from torch.optim import Optimizer

# Module attributes that make DCP's parameter names differ from ``named_parameters()``.
_RENAMING = ("_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module", "_flat_param")


def is_plain(module: nn.Module) -> bool:
    """Whether ``module``'s parameters are plain tensors that DCP names as ``named_parameters()`` does."""
    from torch.distributed.tensor import DTensor

    for sub in module.modules():
        if isinstance(sub, nn.parallel.DistributedDataParallel) or hasattr(sub, "_fqn_modifiers"):
            return False
    for name, param in module.named_parameters():
        if isinstance(param, DTensor) or any(part in _RENAMING for part in name.split(".")):
            return False
    return True


def named_state_dict(module: nn.Module, optimizer: Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` keyed by the names of ``module``'s parameters, its tensors on the CPU.

    CPU tensors are the optimizer's own (not copies): write them out before the next step.
    """
    names = {param: name for name, param in module.named_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    unknown = [i for i, p in enumerate(params) if p not in names]
    if unknown:
        raise ValueError(
            f"{type(optimizer).__name__} holds {len(unknown)} tensor(s) that are not parameters of "
            f"{type(module).__name__} (positions {unknown[:5]}); a checkpoint names optimizer state by parameter"
        )
    name_of = [names[p] for p in params]
    saved = optimizer.state_dict()
    return {
        "state": {name_of[pid]: _on_cpu(value) for pid, value in saved["state"].items()},
        "param_groups": [
            {
                **_on_cpu({k: v for k, v in group.items() if k != "params"}),
                "params": [name_of[i] for i in group["params"]],
            }
            for group in saved["param_groups"]
        ],
    }


def load_named_state_dict(module: nn.Module, optimizer: Optimizer, saved: dict[str, Any]) -> None:
    """Load a name-keyed state (as :func:`named_state_dict` or DCP saves it) into ``optimizer``.

    Each of the optimizer's parameter groups takes its hyperparameters from the saved group that
    holds its first parameter. ``optimizer.load_state_dict`` moves or casts a state tensor only
    where the parameter's device or dtype differs, so a CPU resume keeps the loaded tensors.
    """
    names = {param: name for name, param in module.named_parameters()}
    saved_groups: list[dict[str, Any]] = saved["param_groups"]
    group_of = {name: i for i, group in enumerate(saved_groups) for name in group["params"]}
    saved_state: dict[str, Any] = saved["state"]
    groups: list[dict[str, Any]] = []
    state: dict[str, Any] = {}
    for index, group in enumerate(optimizer.param_groups):
        group_names = [names[p] for p in group["params"] if p in names]
        missing = [n for n in group_names if n not in group_of]
        if len(group_names) != len(group["params"]) or missing:
            raise ValueError(
                f"{type(optimizer).__name__} parameter group {index}: parameters {missing[:5]} (or tensors "
                f"that are not parameters of {type(module).__name__}) have no saved parameter group"
            )
        source = _source_group(saved_groups, group_of, group_names, index)
        groups.append({**{k: v for k, v in source.items() if k != "params"}, "params": group_names})
        state.update({name: saved_state[name] for name in group_names if name in saved_state})
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _source_group(
    saved_groups: list[dict[str, Any]], group_of: dict[str, int], names: list[str], index: int
) -> dict[str, Any]:
    if names:
        return saved_groups[group_of[names[0]]]
    empty = [group for group in saved_groups if not group["params"]]  # a group without parameters
    if len(empty) != 1:
        raise ValueError(
            f"parameter group {index} has no parameters and the checkpoint has {len(empty)} such groups"
        )
    return empty[0]


def _on_cpu(value: Any) -> Any:
    """Tensors of a (nested) state on the CPU; CPU tensors are returned as they are, not copied."""
    return apply_to_collection(value, Tensor, lambda tensor: tensor.detach().cpu())
