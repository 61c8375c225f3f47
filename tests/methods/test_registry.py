"""The method registry: every module of kto_bench/methods registers its config; defaults live only there."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest

from kto_bench.methods import METHODS, Method, MethodConfig, hyperparameters
from kto_bench.methods.base import TENSOR_NAMES, loss_parameters

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = {"kl_reduce"}  # loss arguments that are runtime hooks, not hyperparameters


def test_every_module_registers_and_the_union_is_the_registry():
    modules = {p.stem for p in (ROOT / "kto_bench" / "methods").glob("*.py")} - {"__init__", "base"}
    owners = {METHODS.get(n).__module__.rsplit(".", 1)[1] for n in METHODS}
    assert owners == modules  # each module defines at least one method
    union = typing.get_args(typing.get_args(Method)[0])
    assert {m.model_fields["type"].default for m in union} == set(METHODS.names())


@pytest.mark.parametrize("name", ["kto", "dpo", "ipo", "rdpo", "simpo", "slic", "sft"])
def test_loss_hyperparameters_have_no_defaults_but_the_configs(name: str):
    config = METHODS.get(name)
    assert issubclass(config, MethodConfig) and config.data in ("pairs", "binary")
    params = [p for p in loss_parameters(config.loss) if p.name not in RUNTIME]
    assert all(p.default is inspect.Parameter.empty for p in params), "a default outside the config"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    assert set(hyperparameters(name)) == {p.name for p in params}
    assert all(n in TENSOR_NAMES or n in RUNTIME or n in hyperparameters(name)
               for n in inspect.signature(config.loss).parameters)  # fmt: skip


def test_defaults_as_every_run_used_them():
    # rDPO: the spec's 0.1 (every run used it), not the loss function's old 0.0
    assert hyperparameters("rdpo") == {"beta": 0.1, "label_smoothing": 0.1}
    assert hyperparameters("dpo") == {"beta": 0.1, "label_smoothing": 0.0}
    assert hyperparameters("simpo") == {"beta": 2.0, "gamma_beta_ratio": 0.5, "label_smoothing": 0.0}
    assert hyperparameters("kto") == {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}


def test_spec_error_tags_come_from_the_registry():
    from kto_bench.spec.messages import TAGS

    assert set(METHODS.names()) <= TAGS
