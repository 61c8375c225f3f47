"""Suite-wide settings, read before any test module imports kto_bench.

rich fixes a console's width when the console is made (kto_bench.cli makes its consoles at import), so the
width the tests read output at is set here, once, for every process and xdist worker alike."""

import os

os.environ.setdefault("COLUMNS", "400")
