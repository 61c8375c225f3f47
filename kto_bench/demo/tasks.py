"""The demo's tasks: lm-eval task definitions (task_yaml/) over the demo world's held-out files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kto_bench.eval.tasks import TaskEntry, json_source, read_rows, require_fields

TASK_YAML_DIR = Path(__file__).parent / "task_yaml"
DEFAULT_DATA = "kto_bench.demo.hooks:default_task_data"


def _build(template: str) -> Callable[[Path, Path, bool], tuple[dict, int, dict]]:
    def build(source: Path, include_dir: Path, chat: bool) -> tuple[dict, int, dict]:
        rows = read_rows(source)
        need = ("question", "answer") if template == "demo_arith_gen" else ("question", "choices", "label")
        require_fields(source, rows, need)
        fields = {"include": str(TASK_YAML_DIR / f"{template}.yaml"), **json_source(source)}
        if template == "demo_arith_mc":
            # Each choice is a whole worked answer: under a chat template it is the assistant's turn, which
            # starts right after the generation prompt; raw, it follows the question after a newline.
            fields["target_delimiter"] = "" if chat else "\n"
        return fields, len(rows), {}

    return build


TASK_ENTRIES = (
    TaskEntry(
        "demo_arith_gen",
        "kto_demo_arith_gen",
        0,
        "demo: arithmetic chain of thought, exact match of 'The answer is N'",
        build=_build("demo_arith_gen"),
        own_variant="demo",
        default_data=DEFAULT_DATA,
        label="Demo arith (gen)",
    ),
    TaskEntry(
        "demo_arith_mc",
        "kto_demo_arith_mc",
        0,
        "demo: arithmetic multiple choice, log-likelihood of four full worked answers (acc)",
        build=_build("demo_arith_mc"),
        own_variant="demo",
        default_data=DEFAULT_DATA,
        card_type="multiple-choice",
        label="Demo arith (MC)",
    ),
    TaskEntry(
        "demo_arith_dev",
        "kto_demo_arith_dev",
        0,
        "demo: the dev split of demo_arith_gen (tuning only; disjoint from the reported items)",
        build=_build("demo_arith_gen"),
        own_variant="demo",
        default_data=DEFAULT_DATA,
        dev=True,
    ),
)
