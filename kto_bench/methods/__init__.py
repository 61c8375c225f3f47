"""Training methods: one module per method family, each a `MethodConfig` next to its pure loss.

Importing this package imports every module in it (so each config registers itself in `METHODS`) and
builds `Method`, the spec's discriminated union of the registered configs (`type: kto`). `call_loss` runs a
method by name on a batch of standard-named tensors (`TENSOR_NAMES`).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

from kto_bench.errors import KtoBenchError
from kto_bench.methods.base import (
    METHODS,
    TENSOR_NAMES,
    LossResult,
    MethodConfig,
    loss_parameters,
)
from kto_bench.registry import did_you_mean

if TYPE_CHECKING:
    from torch import Tensor

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

Method = Annotated[
    Union[tuple(METHODS.get(n) for n in METHODS.names())],  # type: ignore[valid-type]  # noqa: UP007
    Field(discriminator="type"),
]


def hyperparameters(name: str) -> dict[str, Any]:
    """A method's loss hyperparameters and their defaults (its config's, with no training data yet)."""
    return METHODS.get(name)().loss_kwargs()


def call_loss(name: str, tensors: dict[str, Tensor], **hyper: Any) -> LossResult:
    """Run method `name` on a batch of standard-named tensors.

    Passes only the tensors and hyperparameters the method's loss accepts, so the loop can hand every
    method the same dict (e.g. `beta` is dropped for sft); hyperparameters not given take the config's
    defaults. A hyperparameter no method knows is an error (a typo), as is a tensor the method requires
    but the batch lacks.
    """
    config = METHODS.get(name)
    known = {p.name for n in METHODS.names() for p in loss_parameters(METHODS.get(n).loss)}
    for key in hyper:
        if key not in known:
            raise KtoBenchError(
                f"unknown loss hyperparameter {key!r}{did_you_mean(key, known)}; known: {', '.join(sorted(known))}"
            )
    kwargs: dict[str, Any] = {}
    for p in inspect.signature(config.loss).parameters.values():
        if p.name in TENSOR_NAMES:
            if p.name in tensors:
                kwargs[p.name] = tensors[p.name]
            elif p.default is p.empty:
                raise KtoBenchError(
                    f"loss {name!r} needs tensor {p.name!r}, but the batch has only: {', '.join(sorted(tensors))}"
                )
        elif p.name in hyper:
            kwargs[p.name] = hyper[p.name]
    return config.loss(**(hyperparameters(name) | kwargs))


__all__ = [
    "METHODS",
    "TENSOR_NAMES",
    "LossResult",
    "Method",
    "MethodConfig",
    "call_loss",
    "hyperparameters",
]
