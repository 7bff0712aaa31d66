"""``apply_compile``: run a module's submodules through ``torch.compile``, in place.

What is compiled, and why: the loops call ``module.training_step(batch, batch_idx)``, which by
default calls ``compute_loss``, which calls submodules (``self.net(x)``) and rarely
``self(...)``. Compiling the TaskModule's own ``forward`` would therefore compile nothing for
most modules, and compiling ``training_step`` itself would trace ``self.log`` and the loss
glue (graph breaks). So the submodules that hold parameters get compiled: each direct child
with its own ``forward`` (containers such as ``nn.ModuleList``, and children whose members carry
module hooks, are searched one level further).

How: the child's ``forward`` is replaced, on the instance, by a call through a compiled
function defined in this file. Two things rule out the obvious alternatives:

- ``torch.compile(child)`` returns a wrapper whose parameter names gain an ``_orig_mod.``
  prefix, so checkpoints would no longer match the module.
- ``nn.Module.compile()`` compiles ``Module._call_impl``, a frame in Dynamo's skip list: in
  torch 2.13 it silently compiles nothing (no frame is captured). Starting the trace here,
  outside ``torch.nn``, lets Dynamo inline the module's forward.

Module hooks (DDP, FSDP2, activation checkpointing) stay outside the compiled region and run
eagerly, which is why the strategy compiles *after* it has wrapped or sharded the module.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

#: torch.compile's keyword arguments that ``Trainer(compile={...})`` accepts (all but ``model``).
COMPILE_KEYWORDS = tuple(name for name in inspect.signature(torch.compile).parameters if name != "model")


def _run_forward(forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return forward(*args, **kwargs)  # Dynamo starts tracing here and inlines ``forward``


class CompiledForward:
    """A module's original ``forward`` called through ``torch.compile``; what ``apply_compile`` installs."""

    def __init__(self, forward: Callable[..., Any], options: Mapping[str, Any]) -> None:
        self.forward = forward
        self.options = dict(options)
        # Every submodule compiles the same function; isolated, each gets its own cache and
        # recompile budget (shared, a model with 8 differently shaped layers would hit the
        # default recompile limit and quietly run the rest eagerly).
        self.compiled = torch.compile(_run_forward, **{"isolate_recompiles": True, **self.options})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.compiled(self.forward, *args, **kwargs)


def check_compile_options(value: Any) -> dict[str, Any] | None:
    """``Trainer(compile=...)`` as torch.compile options (None: do not compile), or a clear error.

    torch itself checks the options (backend name, mode, inductor options) by building a
    compiled function once, so a bad value fails at construction, not at the first step.
    """
    if value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(
            f"Trainer(compile={value!r}): accepted values are False, True or a dict of torch.compile "
            f"keyword arguments with keys in {list(COMPILE_KEYWORDS)}"
        )
    unknown = sorted(set(value) - set(COMPILE_KEYWORDS))
    if unknown:
        raise ValueError(
            f"Trainer(compile={dict(value)!r}): unknown keys {unknown}; accepted keys are {list(COMPILE_KEYWORDS)}"
        )
    try:
        torch.compile(_run_forward, **value)
    except Exception as error:  # torch's own message says what it expected
        raise ValueError(f"Trainer(compile={dict(value)!r}): torch.compile rejected it: {error}") from error
    return dict(value)


def apply_compile(module: nn.Module, options: Mapping[str, Any] | None = None) -> list[str]:
    """Compile, in place, every direct child of ``module`` that has a ``forward`` and parameters.

    A child whose members carry module hooks (FSDP2 units, DeepSpeed ZeRO-3, your own hooks) is
    not compiled whole, since Dynamo would break its graph at every hooked member: its members
    are compiled instead, each with its hooks running eagerly around the graph. Parameter
    names, ``state_dict`` keys and hooks are unchanged; calling it again recompiles with the new
    options. Returns the names of the compiled submodules.

    Raises:
        ValueError: ``module`` has no such submodule (nothing would be compiled).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> apply_compile(net, {"backend": "eager"})
        ['0', '2']
    """
    names = [name for name, _ in _compile_targets(module)]
    if not names:
        raise ValueError(
            f"compile: {type(module).__name__} has no submodule with parameters to compile; torch.compile is "
            "applied to submodules (e.g. self.net = nn.Sequential(...)), not to parameters held by the module itself"
        )
    for _, child in _compile_targets(module):
        current = child.__dict__.get("forward")
        original = current.forward if isinstance(current, CompiledForward) else child.forward
        child.forward = CompiledForward(original, options or {})
    return names


def _compile_targets(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    targets: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        if not any(True for _ in child.parameters()):
            continue  # nothing to learn in it (activations, losses, metrics): not worth a graph
        if _has_forward(child) and not any(_has_hooks(m) for m in child.modules() if m is not child):
            targets.append((prefix + name, child))
        else:  # a container, or hooked members (FSDP2 units, ZeRO-3): compile the members instead
            targets.extend(_compile_targets(child, f"{prefix}{name}."))
    return targets


def _has_forward(module: nn.Module) -> bool:
    forward = inspect.getattr_static(type(module), "forward", None)
    return forward is not None and forward is not inspect.getattr_static(nn.Module, "forward")


def _has_hooks(module: nn.Module) -> bool:
    """Whether module hooks run around this module's forward (Dynamo breaks the graph at them)."""
    return bool(module._forward_pre_hooks or module._forward_hooks or module._backward_hooks)
