"""kto-bench: when does KTO beat DPO, and by how much?"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kto-bench")  # pyproject.toml's, the one place the version is written
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown (not installed: pip install -e .)"
