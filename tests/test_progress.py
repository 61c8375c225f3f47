"""Progress with ETA: the bar on a terminal, timed lines in a log, the demo-world build's relay."""

from __future__ import annotations

import io

from rich.console import Console

from kto_bench.demo import world as synthetic
from kto_bench.progress import eta_line, progress


def test_eta_line() -> None:
    assert eta_line("train x", 120, 800, 80.0) == "train x: 120/800 (15%), 1m20s elapsed, about 7m33s left"
    assert eta_line("train x", 0, 800, 5.0) == "train x: 0/800 (0%), 0m05s elapsed"
    assert eta_line("data x", 7, None, 3700.0) == "data x: 7 done, 1h01m40s elapsed"


def test_a_log_gets_timed_lines_with_the_time_left() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    with progress("reference r", 4, console, every_s=0) as advance:
        advance(1)
        advance(3)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("reference r: 1/4 (25%), 0m00s elapsed, about 0m00s left")
    assert lines[1].startswith("reference r: 4/4 (100%)")
    quiet = io.StringIO()
    with progress("train r", None, Console(file=quiet, force_terminal=False), every_s=3600) as advance:
        advance(1, total=10)  # a total learnt late; nothing printed before every_s
    assert quiet.getvalue() == ""


def test_a_terminal_gets_a_bar_with_an_eta() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    with progress("train r", None, console) as advance:
        advance(1, total=3)
        advance(1)
    assert "train r" in buf.getvalue() and "eta" in buf.getvalue()


def test_the_world_build_relays_progress_records_to_a_display_and_logs_the_rest(monkeypatch) -> None:
    shown = []

    class Display:
        def __init__(self, name, total):
            self.entry = [name, total, []]
            shown.append(self.entry)

        def __enter__(self):
            return lambda n: self.entry[2].append(n)

        def __exit__(self, *exc):
            self.entry.append("closed")

    monkeypatch.setattr(synthetic, "progress_display", Display)
    logged = []
    lines = ["building\n", "@progress demo world: SFT steps|1|4\n", "@progress demo world: SFT steps|4|4\n",
             "demo SFT step 3/4 loss 0.5\n", "@progress demo world: feedback samples|256|300\n",
             "@progress demo world: feedback samples|300|300\n", "built\n"]  # fmt: skip
    synthetic._relay(iter(lines), logged.append)
    assert logged == ["building", "demo SFT step 3/4 loss 0.5", "built"]
    assert shown == [
        ["demo world: SFT steps", 4, [1, 3], "closed"],
        ["demo world: feedback samples", 300, [256, 44], "closed"],
    ]
