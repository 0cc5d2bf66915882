"""`mlabatch demo`: prepare the model if needed, embed the sample table, show what came out."""
from __future__ import annotations

import logging

from mlabatch.jobs.embed import run_embed, summary
from mlabatch.jobs.models import alias_exists, prepare
from mlabatch.pipelines.settings import Settings
from mlabatch.pipelines.tracking import configure_mlflow

log = logging.getLogger(__name__)


def run_demo(settings: Settings) -> str:
    """The whole local story in one command; returns the summary text."""
    configure_mlflow(settings.mlflow)
    registered = f"models:/{settings.model.name}@{settings.model.alias}"
    if settings.model.uri == registered and not alias_exists(settings.model.name, settings.model.alias):
        log.info("registering the bundled all-MiniLM-L6-v2 as %s", registered)
        prepare(settings)
    stats, run_id = run_embed(settings)
    return summary(stats, settings, run_id)
