"""Progress with an ETA for every long stage (data, reference, train, the demo-world build): a rich bar on a
terminal; elsewhere (a SLURM log, CI, a pipe) a plain line every `every_s` seconds, so a log shows how far
a job is and how long it has left."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

STDERR = Console(stderr=True)
Advance = Callable[..., None]  # advance(n, total=None): n more done; a total learnt late is passed here


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def eta_line(label: str, done: int, total: int | None, elapsed: float) -> str:
    """'train kto-…: 120/800 (15%), 1m20s elapsed, about 7m33s left' (no ETA before the first unit or
    without a total)."""
    if not total:
        return f"{label}: {done} done, {_hms(elapsed)} elapsed"
    line = f"{label}: {done}/{total} ({done / total:.0%}), {_hms(elapsed)} elapsed"
    return line + (f", about {_hms(elapsed * (total - done) / done)} left" if done else "")


@contextmanager
def progress(
    label: str, total: int | None, console: Console = STDERR, every_s: float = 30.0
) -> Iterator[Advance]:
    """A context yielding advance(n, total=None) that shows progress and time left."""
    if console.is_terminal:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            "eta",
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        task = bar.add_task(label, total=total)

        def advance_bar(n: int = 1, total: int | None = None) -> None:
            if total is not None:
                bar.update(task, total=total)
            bar.advance(task, n)

        with bar:
            yield advance_bar
        return

    t0 = last = time.monotonic()
    done, known = 0, total

    def advance_log(n: int = 1, total: int | None = None) -> None:
        nonlocal done, known, last
        done, known = done + n, known if total is None else total
        now = time.monotonic()
        if now - last >= every_s:
            console.print(eta_line(label, done, known, now - t0), highlight=False, soft_wrap=True)
            last = now

    yield advance_log
