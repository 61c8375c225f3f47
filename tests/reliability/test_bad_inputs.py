"""The bad-input table of docs/RELIABILITY.md, driven through the command line as a user would: each bad
input gives exit code 2 and one message naming the file/field and the fix, never a Python traceback."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kto_bench.cli import app
from tests.reliability.helpers import cli

REPO = Path(__file__).resolve().parents[2]


def bounded_cli(
    args: list[str], cwd: Path, *, mem_gb: float = 4, timeout: float = 120, file_size: int | None = None
):
    """`kto-bench ARGS` in a subprocess of this checkout, its address space capped at `mem_gb` and killed
    after `timeout` s: a pathological input that regresses fails the test instead of taking the machine
    down. `file_size`: no file may grow past this many bytes (a write past it fails with EFBIG, as a full
    disk fails with ENOSPC). Returns (exit code, output with the console's line wrapping undone); a kill is
    exit code -9."""
    limit = int(mem_gb * 2**30)

    def cap() -> None:
        import signal

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        if file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, resource.RLIM_INFINITY))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "400"}
    cmd = [sys.executable, "-c", "from kto_bench.cli import main; main()", *args]
    try:
        res = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            preexec_fn=cap,
        )
    except subprocess.TimeoutExpired as e:
        return -9, f"killed after {timeout}s: {e.stdout or ''} {e.stderr or ''}"
    return res.returncode, " ".join((res.stdout + res.stderr).split())


BASE = """\
name: bad
model: {source: demo, name: arith-tiny, dtype: float32}
data: {source: local_binary, path: DATA, max_length: 64, max_prompt_length: 24}
methods: [{type: kto}]
training: {precision: fp32, batch_size: 2, budget: {rule: steps, value: 1}}
"""
GOOD_ROWS = [
    {"prompt": f"Compute {i}+1.", "completion": f"The answer is {i + 1}.", "label": i % 2 == 0}
    for i in range(4)
]


def invoke(args: list[str], cwd: Path):
    result = CliRunner(env={"COLUMNS": "400"}).invoke(app, args, catch_exceptions=True)
    text = " ".join(result.output.split())  # undo the console's line wrapping
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        f"uncaught {type(result.exception).__name__}: {result.exception}"
    )
    assert "Traceback" not in result.output
    return result.exit_code, text


def write(tmp: Path, spec: str, rows: list | bytes | None = None) -> Path:
    data = tmp / "data.jsonl"
    if isinstance(rows, bytes):
        data.write_bytes(rows)
    else:
        data.write_text("".join(json.dumps(r) + "\n" for r in (GOOD_ROWS if rows is None else rows)))
    path = tmp / "spec.yaml"
    path.write_text(spec.replace("DATA", str(data)))
    return path


# (row id, spec text, what the message must say); every row: `kto-bench run` exits 2
SPEC_ROWS = [
    ("malformed-yaml", BASE + "training: {lr: [1e-3\n", r"spec.yaml:\d+: malformed YAML.*fix the syntax"),
    (
        "unknown-key",
        BASE.replace("precision: fp32", "precison: fp32"),
        r"spec.yaml:5: training.precison: unknown key 'precison'; remove it; did you mean 'precision'",
    ),
    (
        "wrong-type",
        BASE.replace("batch_size: 2", "batch_size: two"),
        r"spec.yaml:5: training.batch_size: .*integer",
    ),
    (
        "out-of-range",
        BASE + "corruption: {flip_rate: 0.7}\n",
        r"spec.yaml:6: corruption.flip_rate: .*less than or equal to 0.5 \(got 0.7\)",
    ),
    (
        "grid-unknown-field",
        BASE + "grid: {training.lrr: [1.0e-3]}\n",
        r"spec.yaml:6: grid.training.lrr: not a field of a run.*did you mean 'training.lr'",
    ),
    (
        "unknown-source",
        BASE.replace("local_binary", "local_binry"),
        r"spec.yaml:3: data.source: unknown data source 'local_binry'.*did you mean 'local_binary'",
    ),
    ("unknown-method", BASE.replace("type: kto", "type: ktoo"), r"spec.yaml:4: methods.0: .*'ktoo'.*'kto'"),
    (
        "unknown-task",
        BASE + "evaluation: {tasks: [{name: gsm9k}]}\n",
        r"spec.yaml:6: evaluation.tasks.0.name: unknown task 'gsm9k'.*did you mean",
    ),
    (
        "grid-point-invalid",
        BASE + "grid: {corruption.flip_rate: [0.1, 0.9]}\n",
        r"grid point \(corruption.flip_rate=0.9.*less than or equal to 0.5",
    ),
    (
        "kto-batch-of-one",
        BASE.replace("batch_size: 2", "batch_size: 1"),
        r"batch_size must be at least 2 for KTO",
    ),
]


@pytest.mark.parametrize(("row", "spec", "message"), SPEC_ROWS, ids=[r[0] for r in SPEC_ROWS])
def test_bad_spec(tmp_path, row, spec, message):
    path = write(tmp_path, spec)
    code, text = invoke(["run", str(path), "--results", str(tmp_path / "r"), "--no-report"], tmp_path)
    assert code == 2, text
    assert re.search(message, text), text
    assert not (tmp_path / "r" / "bad").exists(), "a bad spec must fail before any work"


def test_missing_and_non_utf8_spec_files(tmp_path):
    code, text = invoke(["run", str(tmp_path / "nope.yaml")], tmp_path)
    assert code == 2 and "nope.yaml: no such spec file" in text
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    code, text = invoke(["run", str(bad)], tmp_path)
    assert code == 2 and re.search(r"latin1.yaml: not UTF-8 text.*save it as UTF-8", text), text


# a billion-laughs of 540 bytes after the spec (the had 862): 9 levels of 9 aliases, 9^9 values
ALIAS_BOMB = "".join(
    [BASE, "x0: &x0 [" + ", ".join(["lol"] * 9) + "]\n"]
    + [f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9) + "]\n" for i in range(1, 10)]
)
YAML_ROWS = [
    ("alias-bomb", ALIAS_BOMB, r"spec.yaml:\d+: YAML aliases expand this spec to more than 100,000 values"),
    (
        "nested-20000-deep",
        BASE + "x: " + "[" * 20_000 + "]" * 20_000 + "\n",
        r"spec.yaml:6: YAML nested deeper than 64",
    ),
    (
        "recursive-alias",
        BASE + "x: &a [*a]\n",
        r"spec.yaml:6: a YAML alias refers to a node that contains it",
    ),
]


@pytest.mark.parametrize(("row", "spec", "message"), YAML_ROWS, ids=[r[0] for r in YAML_ROWS])
def test_hostile_yaml_fails_at_once_naming_the_file(tmp_path, row, spec, message):
    """validate, plan and run refuse it at once (exit 2, the file and line named), in bounded memory."""
    path = write(tmp_path, spec)
    for command in (["validate"], ["plan"], ["run", "--results", "r", "--no-report"]):
        code, text = bounded_cli([command[0], str(path), *command[1:]], tmp_path, mem_gb=3, timeout=60)
        assert code == 2 and "Traceback" not in text, (command, code, text[-2000:])
        assert re.search(message, text), (command, text[-2000:])
    assert not (tmp_path / "r").exists()


def test_bad_command_line(tmp_path):
    path = write(tmp_path, BASE)
    for args, message in [
        (["--set", "training.lr"], r"--set 'training.lr': expected KEY=VALUE"),
        (["--set", "training.lr=fast"], r"training.lr: .*number"),
        (["--stage", "trian"], r"--stage 'trian': choose one of data, reference, train, eval, done"),
        (["--only", "dpo-"], r"--only 'dpo-' matches no run id; see `kto-bench plan SPEC`"),
    ]:
        code, text = invoke(["run", str(path), "--results", str(tmp_path / "r"), *args], tmp_path)
        assert code == 2 and re.search(message, text), (args, text)


# (row id, data file rows, message); the data stage stops with exit 2
DATA_ROWS = [
    (
        "missing-field",
        [*GOOD_ROWS, {"prompt": "Compute 1+1.", "label": True}],
        r"source 'local_binary', file \S+data.jsonl, line 5: field 'completion' is missing or null.*on_bad_row: drop",
    ),
    (
        "non-boolean-label",
        [*GOOD_ROWS, {"prompt": "p", "completion": "c", "label": "yes"}],
        r"line 5: field 'label' must be true/false \(or 0/1\), got 'yes'",
    ),
    (
        "empty-string",
        [*GOOD_ROWS, {"prompt": "p", "completion": "  ", "label": True}],
        r"line 5: field 'completion' is empty",
    ),
    (
        "duplicate-id",
        [{**GOOD_ROWS[0], "id": 7}, {**GOOD_ROWS[1], "id": 7}],
        r"line 2: field 'id' '7' is also used by line 1",
    ),
    (
        "non-utf8",
        b"".join(json.dumps(r).encode() + b"\n" for r in GOOD_ROWS) + b'{"prompt": "caf\xe9"}\n',
        r"data.jsonl, line 5: field 'row' is not UTF-8 text \(invalid continuation byte at byte 15\)",
    ),
    ("not-json", b'{"prompt": "p", "completion": \n', r"line 1: field 'row' is not valid JSON"),
]
# rows the JSON parser, the hasher or the tokenizer used to crash on (issue 18): (row id, line, message)
HOSTILE_ROWS = [
    (
        "5000-digit-number",
        b'{"prompt": "p", "completion": "c", "label": ' + b"1" * 5000 + b"}",
        r"line 5: field 'label' must be true/false \(or 0/1\), got a 5000-digit number",
        "type label",
    ),
    (
        "5000-digit-id",
        b'{"prompt": "p", "completion": "c", "label": true, "id": 1' + b"0" * 5000 + b"}",
        r"line 5: field 'id' must be a string or integer, got a 5001-digit number",
        "type id",
    ),
    (
        "200000-deep-nesting",
        b'{"prompt": "p", "completion": "c", "label": true, "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
        r"line 5: field 'row' is nested too deeply for the JSON parser",
        "deep row",
    ),
    (
        "lone-surrogate",
        b'{"prompt": "p", "completion": "ok \\ud800", "label": true}',
        r"line 5: field 'completion' contains a lone surrogate '\\ud800' \(at character 3\)",
        "encoding completion",
    ),
    (
        "nul",
        b'{"prompt": "p\\u0000", "completion": "c", "label": true}',
        r"line 5: field 'prompt' contains a NUL character \(at character 1\); remove it",
        "nul prompt",
    ),
]
DATA_ROWS += [
    (row, b"".join(json.dumps(r).encode() + b"\n" for r in GOOD_ROWS) + line + b"\n", message)
    for row, line, message, _ in HOSTILE_ROWS
]


@pytest.mark.parametrize(("row", "rows", "message"), DATA_ROWS, ids=[r[0] for r in DATA_ROWS])
def test_bad_data_rows(world_cache, tmp_path, row, rows, message):
    path = write(tmp_path, BASE, rows)
    code, text = invoke(["run", str(path), "--results", str(tmp_path / "r"), "--stage", "data"], tmp_path)
    assert code == 2, text
    assert re.search(message, text), text


def test_bad_rows_are_dropped_and_counted_when_asked(world_cache, tmp_path):
    rows = [*GOOD_ROWS, {"prompt": "p", "completion": "c", "label": "yes"}, {"prompt": "p", "label": True}]
    path = write(
        tmp_path, BASE.replace("max_prompt_length: 24", "max_prompt_length: 24, on_bad_row: drop"), rows
    )
    code, text = invoke(["run", str(path), "--results", str(tmp_path / "r"), "--stage", "data"], tmp_path)
    assert code == 0, text
    (report,) = (tmp_path / "r" / "bad").glob("*/data_report.json")
    dropped = json.loads(report.read_text())["dropped"]
    assert dropped["type label"] == 1 and dropped["missing completion"] == 1


def test_hostile_rows_are_dropped_and_counted_by_name_when_asked(world_cache, tmp_path):
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in GOOD_ROWS)
    lines += b"".join(line + b"\n" for _, line, _, _ in HOSTILE_ROWS)
    spec = BASE.replace("max_prompt_length: 24", "max_prompt_length: 24, on_bad_row: drop")
    code, text = invoke(
        ["run", str(write(tmp_path, spec, lines)), "--results", str(tmp_path / "r"), "--stage", "data"],
        tmp_path,
    )
    assert code == 0, text
    (report,) = (tmp_path / "r" / "bad").glob("*/data_report.json")
    report = json.loads(report.read_text())
    assert {k: v for k, v in report["dropped"].items() if " " in k} == {key: 1 for *_, key in HOSTILE_ROWS}
    assert report["source"]["items"] == len(GOOD_ROWS)


def test_huge_row_is_truncated_not_fatal(world_cache, tmp_path):
    huge = {
        "prompt": "Compute " + "1+" * 200_000 + "1.",
        "completion": "The answer is " + "9" * 500_000 + ".",
        "label": True,
    }
    path = write(tmp_path, BASE, [*GOOD_ROWS, huge])
    code, text = invoke(["run", str(path), "--results", str(tmp_path / "r"), "--stage", "data"], tmp_path)
    assert code == 0, text
    (report,) = (tmp_path / "r" / "bad").glob("*/data_report.json")
    lengths = json.loads(report.read_text())["lengths"]
    assert lengths["prompt"]["max"] <= 24 and lengths["prompt"]["max"] + lengths["completion"]["max"] <= 64


def test_a_50mb_line_is_capped_before_tokenizing(world_cache, tmp_path):
    """A 50 MB completion (tokenized whole it took 11 GB) is cut to a character cap first: the data stage
    finishes in 3 GB and counts the capped text in data_report.json."""
    huge = (
        b'{"prompt": "Compute 1+1.", "completion": "The answer is '
        + b"9" * 50_000_000
        + b'.", "label": true}'
    )
    lines = b"".join(json.dumps(r).encode() + b"\n" for r in GOOD_ROWS) + huge + b"\n"
    path = write(tmp_path, BASE, lines)
    code, text = bounded_cli(
        ["run", str(path), "--results", "r", "--stage", "data"], tmp_path, mem_gb=3, timeout=240
    )
    assert code == 0, text[-3000:]
    (report,) = (tmp_path / "r" / "bad").glob("*/data_report.json")
    report = json.loads(report.read_text())
    assert report["capped"]["completions"] == 1 and report["capped"]["prompts"] == 0
    assert report["counts"]["desirable"] == 3 and report["lengths"]["completion"]["max"] <= 64


def test_chat_template_that_cannot_render(world_cache, tmp_path):
    spec = BASE.replace(
        "max_prompt_length: 24",
        "max_prompt_length: 24, chat_template: '{{ messages[0].content | nosuchfilter }}'",
    )
    code, text = invoke(
        ["run", str(write(tmp_path, spec)), "--results", str(tmp_path / "r"), "--stage", "data"], tmp_path
    )
    assert code == 2 and re.search(r"chat template cannot render.*fix data.chat_template", text), text


def test_completions_truncated_away_are_dropped_and_counted(world_cache, tmp_path):
    # a template that renders no reply for "SKIP" leaves that example without completion tokens
    template = (
        "{% for m in messages %}{% if m.role == 'user' %}<|user|>{{ m.content }}{% else %}<|assistant|>"
        "{% if m.content != 'SKIP' %}{{ m.content }}<|end|>{% endif %}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    rows = [*GOOD_ROWS, {"prompt": "Compute 9+9.", "completion": "SKIP", "label": False}]
    spec = BASE.replace(
        "max_prompt_length: 24", f"max_prompt_length: 24, chat_template: {json.dumps(template)}"
    )
    code, text = invoke(
        ["run", str(write(tmp_path, spec, rows)), "--results", str(tmp_path / "r"), "--stage", "data"],
        tmp_path,
    )
    assert code == 0, text
    (report,) = (tmp_path / "r" / "bad").glob("*/data_report.json")
    report = json.loads(report.read_text())
    assert report["dropped"]["binary_truncated_away"] == 1 and report["counts"]["desirable"] == 2


def test_model_path_that_does_not_exist(world_cache, tmp_path):
    spec = BASE.replace(
        "{source: demo, name: arith-tiny, dtype: float32}", "{source: local, name: /no/such/model}"
    )
    code, text = invoke(["run", str(write(tmp_path, spec)), "--results", str(tmp_path / "r")], tmp_path)
    assert code == 2 and re.search(r"model.name: local model path '/no/such/model' does not exist", text), (
        text
    )


def test_data_file_that_does_not_exist(world_cache, tmp_path):
    spec = BASE.replace("path: DATA", "path: /no/such/file.jsonl")
    code, text = invoke(["run", str(write(tmp_path, spec)), "--results", str(tmp_path / "r")], tmp_path)
    assert code == 2 and "file /no/such/file.jsonl does not exist" in text, text


def test_a_real_process_exits_2_without_traceback(world_cache, tmp_path):
    """The same contract outside CliRunner: exit status 2, one error line, no traceback on stderr."""
    rows = b'{"prompt": "p", "completion": "c\xff", "label": true}\n'
    path = write(tmp_path, BASE, rows)
    res = cli(["run", str(path), "--results", str(tmp_path / "r"), "--stage", "data"], tmp_path)
    assert res.returncode == 2, res.output
    assert "Traceback" not in res.output and "error:" in res.output
