"""`mlabatch kernels build`: compile (or find) the MLA kernel for this runtime and say which backend runs.

As the first task of a GPU job it compiles once into MLABATCH_KERNELS_CACHE (a Unity Catalog volume
on Databricks, keyed by torch, CUDA, GPU arch and source hash); later tasks and workers load that
build. Without a Hopper GPU it reports the fallback backend instead of failing the job.
"""
from __future__ import annotations

import json
import logging

from mlabatch.kernels import info

log = logging.getLogger(__name__)


def build_kernels() -> dict[str, str]:
    """Load or build the extension now and return `kernels.info()`; logs a fallback loudly."""
    state = info()
    if state["backend"] != "cuda":
        log.warning("the MLA kernel is not in use here; decoding falls back to %s: %s",
                    state["backend"], state["extension"])
    return state


def report(state: dict[str, str]) -> str:
    """The state as indented JSON, for the job log."""
    return json.dumps(state, indent=2)
