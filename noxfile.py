"""nox sessions: tests, lint, report, bench, and one `experiment(<name>)` session per experiments/*.yaml.

nox                          # the default sessions: tests, lint
nox -l                       # list every session, experiments included
nox -s "experiment(demo)"    # run an experiment (extra arguments go to `kto-bench run`)
nox -s "experiment(smollm2_offline)" -- --allow-code-execution
nox -s report -- experiments/demo.yaml
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
EXPERIMENTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml"))
TORCH = "torch==2.13.0"  # installed first, so pip takes the pinned (CPU) wheel instead of resolving another

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint"]


def _install(session: nox.Session, extras: str = "") -> None:
    session.install(TORCH)
    session.install(
        "-e", f".[{extras}]" if extras else ".", "-c", ".ci/constraints.txt"
    )  # the tested versions


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (pass pytest arguments after --, e.g. -- -m 'not slow')."""
    _install(session, "dev")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def report(session: nox.Session) -> None:
    """Render the report of a spec from the results store: nox -s report -- SPEC [kto-bench report options]."""
    if not session.posargs:
        session.error("give a spec: nox -s report -- experiments/<name>.yaml")
    _install(session)
    session.run("kto-bench", "report", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Throughput and memory benchmark (kto-bench bench, arguments after --)."""
    _install(session, "bench")
    session.run("kto-bench", "bench", *session.posargs)


@nox.session
@nox.parametrize("name", EXPERIMENTS, ids=EXPERIMENTS)
def experiment(session: nox.Session, name: str) -> None:
    """Run (or resume) one experiment and render its report; arguments after -- go to `kto-bench run`."""
    _install(session, "eval")
    spec = f"experiments/{name}.yaml"
    session.run("kto-bench", "validate", spec)
    session.run("kto-bench", "run", spec, *session.posargs)
