"""Hugging Face hub revisions, resolved to commits before any stage runs.

A branch or tag (`main`, `v1.0`) moves; a commit sha does not. Every hub model and dataset a run uses is
loaded at, recorded with, and keyed by the commit its revision pointed to when the run started, so a cache
entry can never serve results of weights or rows the hub has since replaced.
"""

from __future__ import annotations

import functools
import os
import re

from kto_bench.errors import KtoBenchError

COMMIT = re.compile(r"[0-9a-f]{40}")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def unreachable() -> str | None:
    """Why the hub cannot be used from here (HF_HUB_OFFLINE, or no connection to it), or None."""
    if offline():
        return "HF_HUB_OFFLINE is set"
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as e:
        return f"{host} is unreachable ({e.strerror or type(e).__name__})"
    return None


@functools.lru_cache(maxsize=64)
def commit(
    repo_id: str, revision: str | None, repo_type: str = "model", field: str = "model.revision"
) -> str:
    """The commit sha `revision` (default `main`) of a hub repo points to: from the hub when reachable,
    else from the local hub cache (offline). `field` names the spec field in the error."""
    if revision and COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import HfApi, snapshot_download

    rev = revision or "main"
    problems = []
    if not offline():
        try:
            info = HfApi().repo_info(repo_id, revision=rev, repo_type=repo_type, timeout=10)
            return info.sha
        except Exception as e:  # network, auth, missing repo: try the local cache, then say what failed
            problems.append(f"hub: {type(e).__name__}")
    try:
        path = snapshot_download(repo_id, revision=rev, repo_type=repo_type, local_files_only=True)
        return os.path.basename(path)
    except Exception as e:
        problems.append(f"local cache: {type(e).__name__}")
    raise KtoBenchError(
        f"{field}: cannot resolve {repo_type} {repo_id!r} revision {rev!r} to a commit ({'; '.join(problems)}). "
        "Make the hub reachable, download it once (`huggingface-cli download`), or set the field to a "
        "40-character commit sha that is in the local hub cache"
    )
