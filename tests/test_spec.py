"""Spec loading: errors name file, line, field and fix; grid expansion; stable run ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from kto_bench.errors import SpecError
from kto_bench.spec import ExperimentSpec, expand, grid_values, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
BASE = """\
name: t
model: {source: hub, name: some/model}
data: {source: local_pairs, path: x.jsonl}
methods:
  - {type: kto}
  - {type: dpo}
seeds: [1, 2]
"""


def test_minimal_spec_fills_every_default():
    spec = parse_spec(BASE)
    run = expand(spec)[0]
    dumped = run.model_dump(mode="json")
    assert dumped["training"]["budget"] == {"rule": "epochs", "value": 1.0, "per": "absolute"}
    assert dumped["corruption"]["flip_rate"] == 0.0
    assert dumped["method"]["beta"] == 0.1
    assert len(expand(spec)) == 4  # 2 methods x 2 seeds


def test_unknown_key_names_line_field_and_suggestion():
    text = BASE + "training:\n  lr: 1.0e-6\n  lerning_rate_schedule: cosine\n  shedule: cosine\n"
    with pytest.raises(SpecError) as e:
        parse_spec(text, "exp.yaml")
    msg = str(e.value)
    assert "exp.yaml:11" in msg and "training.shedule" in msg and "did you mean 'schedule'" in msg


def test_wrong_type_names_field():
    with pytest.raises(SpecError) as e:
        parse_spec(BASE + "training: {batch_size: eight}\n", "exp.yaml")
    assert "training.batch_size" in str(e.value) and "exp.yaml:8" in str(e.value)


@pytest.mark.parametrize("rate", [0.7, -0.1])
def test_flip_rate_out_of_range(rate):
    with pytest.raises(SpecError) as e:
        parse_spec(BASE + f"corruption: {{flip_rate: {rate}}}\n", "exp.yaml")
    assert "corruption.flip_rate" in str(e.value)


@pytest.mark.parametrize("field,value", [("desirable_fraction", 0.0), ("undesirable_fraction", 1.5)])
def test_fractions_out_of_range(field, value):
    with pytest.raises(SpecError, match=f"corruption.{field}"):
        parse_spec(BASE + f"corruption: {{{field}: {value}}}\n")


def test_kto_needs_per_step_batch_of_two():
    with pytest.raises(SpecError, match="batch_size must be at least 2 for KTO"):
        parse_spec(BASE + "training: {batch_size: 1}\n")
    parse_spec(BASE.replace("  - {type: kto}\n", "") + "training: {batch_size: 1}\n")  # DPO alone is fine


def test_fused_kl_needs_per_microbatch_z0():
    spec = BASE.replace("{type: kto}", "{type: kto, z0_scope: step}")
    with pytest.raises(SpecError, match="kl_pass: fused.*use kl_pass: separate"):
        parse_spec(spec + "training: {kl_pass: fused}\n")
    parse_spec(spec + "training: {kl_pass: separate}\n")
    parse_spec(BASE + "training: {kl_pass: fused, layout: packed}\n")


def test_offline_mmlu_few_shot_is_refused_at_validation():
    text = BASE + "evaluation:\n  tasks:\n    - {name: mmlu, variant: offline, num_fewshot: 5}\n"
    with pytest.raises(SpecError, match=r"exp.yaml:10.*evaluation.tasks.0.*0-shot only.*num_fewshot: 0"):
        parse_spec(text, "exp.yaml")
    parse_spec(text.replace("num_fewshot: 5", "num_fewshot: 0"), "exp.yaml")
    parse_spec(text.replace("offline", "stock"), "exp.yaml")


def test_unknown_grid_key_and_unknown_names():
    with pytest.raises(SpecError, match=r"grid.corruption.flip_rat.*did you mean 'corruption.flip_rate'"):
        parse_spec(BASE + "grid: {corruption.flip_rat: [0.1]}\n")
    with pytest.raises(SpecError, match="unknown data source 'local_pair'.*did you mean 'local_pairs'"):
        parse_spec(BASE.replace("local_pairs", "local_pair"))
    with pytest.raises(SpecError, match="methods.0"):
        parse_spec(BASE.replace("{type: kto}", "{type: kot}"))
    with pytest.raises(SpecError, match="unknown task"):
        parse_spec(BASE + "evaluation: {tasks: [{name: gsm8kk}]}\n")


def test_grid_point_that_is_invalid_is_reported():
    with pytest.raises(SpecError, match="grid point"):
        parse_spec(BASE + "grid: {corruption.flip_rate: [0.1, 0.9]}\n")


def test_malformed_yaml_names_line():
    with pytest.raises(SpecError, match=r"exp.yaml:\d+: malformed YAML"):
        parse_spec(BASE + "training: {lr: [\n", "exp.yaml")


def test_grid_blocks_are_a_union_of_cross_products_with_dedup():
    text = (
        BASE
        + "grid:\n  - {corruption.flip_rate: [0.0, 0.2]}\n  - {corruption.desirable_fraction: [1.0, 0.5], method: [kto]}\n"
    )
    spec = parse_spec(text)
    runs = expand(spec)
    # block 1: 2 rates x 2 methods x 2 seeds = 8; block 2: 2 fractions x kto x 2 seeds = 4, of which
    # fraction 1.0 duplicates block 1's flip 0 kto runs (2) -> 10 unique runs
    assert len(runs) == 10
    assert len({r.run_id for r in runs}) == 10
    grids = [grid_values(spec, r) for r in runs]
    assert {"corruption.flip_rate", "corruption.desirable_fraction"} == set(grids[0])


def test_run_ids_are_stable_and_content_addressed():
    a = [r.run_id for r in expand(parse_spec(BASE))]
    b = [r.run_id for r in expand(parse_spec(BASE + "description: other words\n"))]
    assert a == b  # description does not affect results
    c = [r.run_id for r in expand(parse_spec(BASE + "training: {lr: 1.0e-6}\n"))]
    assert not set(a) & set(c)
    assert a[0] == "kto-" + a[0].split("-")[1] and len(a[0].split("-")[1]) == 10


def test_spec_yaml_roundtrip_keeps_hash():
    spec = parse_spec(BASE + "grid: {corruption.flip_rate: [0.0, 0.2]}\n")
    again = parse_spec(yaml.safe_dump(spec.model_dump(mode="json")))
    assert again.spec_hash == spec.spec_hash
    assert [r.run_id for r in expand(again)] == [r.run_id for r in expand(spec)]


def test_overrides_apply_dotted_paths():
    spec = parse_spec(BASE, overrides={"training.lr": 2e-6, "seeds": [7]})
    assert spec.training.lr == 2e-6 and spec.seeds == [7]


def test_shipped_specs_validate():
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        assert expand(load_spec(path)), path


def test_missing_file_and_non_mapping():
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec("nope.yaml")
    with pytest.raises(SpecError, match="YAML mapping"):
        parse_spec("- a\n- b\n")


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=12,
    )
)
def test_fuzzed_specs_accept_or_raise_spec_error(doc):
    try:
        parse_spec(yaml.safe_dump(doc))
    except SpecError as e:
        assert str(e)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["training", "corruption", "data", "grid", "methods", "seeds", "evaluation"]),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=5),
            st.dictionaries(st.text(max_size=12), st.integers() | st.floats(allow_nan=False)),
        ),
        max_size=3,
    )
)
def test_fuzzed_sections_on_a_valid_base(extra):
    base = yaml.safe_load(BASE)
    base.update(extra)
    try:
        ExperimentSpec  # noqa: B018 - the public model
        parse_spec(yaml.safe_dump(base))
    except SpecError as e:
        assert str(e)
