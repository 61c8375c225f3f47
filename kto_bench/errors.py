"""The project's own error types: user mistakes raise these, with a message that names the fix."""

from __future__ import annotations


class KtoBenchError(Exception):
    """Base class of every error a user can cause (bad spec, bad data, missing asset)."""


class SpecError(KtoBenchError):
    """An experiment spec is malformed; the message names file, line, field path and fix."""


class DataError(KtoBenchError):
    """A data source or row is unusable; the message names the source, row and field."""


class AssetError(KtoBenchError):
    """An offline mirror or model cannot be fetched or fails its checksum."""


class StoreError(KtoBenchError):
    """The results store is unusable (read-only, full, corrupted, mismatched checkpoint)."""


class TrainingError(KtoBenchError):
    """Training stopped (NaN/inf loss or gradients); the message says where the last good checkpoint is."""


class EvalError(KtoBenchError):
    """An evaluation task cannot run as configured."""


def exit_code(e: Exception) -> int:
    """The command's exit status: 1 when a run failed at runtime (training diverged), 2 for everything the
    user fixes (spec, data, assets, store, environment). An unexpected exception exits 1 with its traceback."""
    return 1 if isinstance(e, TrainingError) else 2
