"""`python -m kto_bench` = the `kto-bench` command."""

from kto_bench.cli import app

app()
