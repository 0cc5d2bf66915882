"""Local-mode Spark (2 cores, 4 attempts per task), real Delta tables via delta-rs, a real MLflow store."""
from __future__ import annotations

import pyarrow as pa
import pytest
from deltalake import write_deltalake
from pydoc_data.topics import topics

from mlabatch.jobs.config import load_settings

SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])


def _documents() -> dict[str, str | None]:
    """A small source: ordinary, empty, null, unicode, and two documents long enough to split."""
    return {
        "doc-short": "Spark pandas UDFs stream Arrow batches to Python workers.",
        "doc-unicode": "Grüße aus Zürich! 日本語 🚀 مرحبا",
        "doc-empty": "",
        "doc-blank": "  \n ",
        "doc-null": None,
        "doc-long": topics["class"],
        "doc-longer": topics["for"] + "\n" + topics["while"] + "\n" + topics["try"],
    }


def _write_source(path, docs: dict[str, str | None], extra_rows: list[tuple] = ()) -> None:
    rows = [{"id": k, "text": v} for k, v in docs.items()] + [{"id": i, "text": t} for i, t in extra_rows]
    write_deltalake(str(path), pa.Table.from_pylist(rows, schema=SCHEMA), mode="overwrite")


@pytest.fixture()
def documents():
    """A fresh copy of the small source documents (tests edit it)."""
    return _documents


@pytest.fixture()
def write_source():
    """Write {id: text} (plus extra (id, text) rows) as the Delta source table at a path."""
    return _write_source


@pytest.fixture(scope="session")
def spark():
    from mlabatch.pipelines.settings import SparkSettings
    from mlabatch.pipelines.spark import get_spark

    session = get_spark(SparkSettings(master="local[2,4]", max_records_per_batch=64))
    yield session
    session.stop()


@pytest.fixture()
def make_settings(tmp_path, minilm_dir):
    """Settings for one test: tables and MLflow store under tmp_path, the MiniLM directory as model."""
    def make(*overrides: str):
        base = [
            f"source.table={tmp_path}/source",
            f"target.table={tmp_path}/target",
            f"model.uri={minilm_dir}",
            "embed.max_tokens=128",
            "embed.overlap_tokens=16",
            "embed.token_budget=512",
            f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"mlflow.registry_uri=sqlite:///{tmp_path}/mlflow.db",
            f"mlflow.artifact_location={tmp_path}/artifacts",
            "spark.master=local[2,4]",
            "spark.max_records_per_batch=64",
        ]
        return load_settings([], base + list(overrides))

    return make
