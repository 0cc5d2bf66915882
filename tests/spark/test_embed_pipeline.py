"""The embedding job end to end on local Spark with real Delta tables and a real MLflow store."""

import numpy as np
import pytest
from deltalake import DeltaTable
from pydoc_data.topics import topics

from mlabatch.jobs.embed import run_embed
from chunking_oracle import split_text


def target_rows(settings) -> dict[tuple[str, int], dict]:
    rows = DeltaTable(settings.target.table).to_pyarrow_table().to_pylist()
    keyed = {(r["id"], r["chunk"]): r for r in rows}
    assert len(keyed) == len(rows), "duplicate (id, chunk) keys in the target"
    return keyed


def test_first_run_embeds_everything_and_flags_bad_rows(spark, make_settings, embedder, tokenizer, documents, write_source):
    settings = make_settings()
    write_source(settings.source.table, documents(), extra_rows=[("dup", "first copy"), ("dup", "second copy")])
    stats, run_id = run_embed(settings)
    rows = target_rows(settings)

    expected_chunks = {
        doc_id: len(split_text(text, tokenizer, 128, 16, 64)) if text and text.strip() else 1
        for doc_id, text in documents().items()
    }
    expected_chunks["dup"] = 1
    got_chunks = {}
    for doc_id, _ in rows:
        got_chunks[doc_id] = got_chunks.get(doc_id, 0) + 1
    assert got_chunks == expected_chunks
    assert expected_chunks["doc-long"] > 2 and expected_chunks["doc-longer"] > 2

    assert rows[("doc-null", 0)]["error"] == "text is null"
    assert rows[("doc-empty", 0)]["error"] == "text is empty or whitespace"
    assert rows[("doc-blank", 0)]["error"] == "text is empty or whitespace"
    assert rows[("dup", 0)]["error"] == "id appears 2 times in the source; ids must be unique"
    assert all(rows[(d, 0)]["embedding"] is None for d in ("doc-null", "doc-empty", "dup"))

    good = [r for r in rows.values() if r["error"] is None]
    ours = np.array([r["embedding"] for r in good], dtype=np.float32)
    direct = embedder.embed([r["chunk_text"] for r in good])
    cosine = (ours * direct).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(direct, axis=1)
    assert cosine.min() >= 0.9999
    assert all(0 < r["token_count"] <= 128 and not r["truncated"] for r in good)

    assert (stats.rows_read, stats.duplicate_ids, stats.errors) == (9, 1, 4)
    assert stats.chunks_embedded == len(rows)
    assert stats.new == 8 and stats.skipped == 0

    import mlflow

    run = mlflow.get_run(run_id)
    assert run.data.metrics["chunks_embedded"] == len(rows)
    assert run.data.params["model_version"].startswith("dir:")
    # every model task reported how busy its engine was, once per partition, documents and tokens adding up
    assert len(stats.tasks) == len({(t.stage, t.partition) for t in stats.tasks}) >= 1
    assert sum(t.items for t in stats.tasks) == stats.new and sum(t.tokens_in for t in stats.tasks) == stats.tokens
    assert all(0 < t.engine_share <= 1 for t in stats.tasks if t.tokens_in)
    assert run.data.metrics["model_tasks"] == len(stats.tasks) and 0 < run.data.metrics["engine_share"] <= 1
    history = mlflow.tracking.MlflowClient().get_metric_history(run_id, "task_engine_share")
    assert sorted(m.step for m in history) == list(range(len(stats.tasks)))
    assert {r["chunking"] for r in rows.values()} == {"128/16/64/chunks"}


def test_rerun_is_a_no_op_and_an_edit_reembeds_only_that_document(spark, make_settings, documents, write_source):
    settings = make_settings("target.max_delete_fraction=0.2")  # it deletes 1 of 7 documents
    docs = documents()
    write_source(settings.source.table, docs)
    run_embed(settings)
    before = target_rows(settings)

    stats, _ = run_embed(settings)
    assert (stats.new, stats.chunks_embedded, stats.rows_removed) == (0, 0, 0)
    assert DeltaTable(settings.target.table).version() == 0  # nothing was written at all

    docs["doc-longer"] = "Now it is short."  # shortened: its old chunks 1..n must go
    docs["doc-short"] = docs["doc-short"] + " Edited."
    del docs["doc-unicode"]  # deleted from the source: its rows must go
    write_source(settings.source.table, docs)
    stats, _ = run_embed(settings)
    after = target_rows(settings)

    assert stats.new == 2 and stats.deleted == 1
    assert [k for k in after if k[0] == "doc-longer"] == [("doc-longer", 0)]
    assert after[("doc-longer", 0)]["chunk_text"] == "Now it is short."
    assert not any(k[0] == "doc-unicode" for k in after)
    for key, row in after.items():  # everything else untouched, bit for bit
        if key[0] not in ("doc-longer", "doc-short"):
            assert row["embedded_at"] == before[key]["embedded_at"]
            assert row["embedding"] == before[key]["embedding"]
    assert after[("doc-short", 0)]["embedded_at"] > before[("doc-short", 0)]["embedded_at"]

    stats, _ = run_embed(make_settings("embed.overlap_tokens=8"))  # new chunking: everything again
    assert stats.new == len(docs) and stats.skipped == 0


def test_far_too_long_document_is_cut_and_flagged(spark, make_settings, documents, write_source):
    settings = make_settings("embed.max_chunks_per_doc=3")
    write_source(settings.source.table, {"huge": " ".join(topics.values())})
    run_embed(settings)
    rows = target_rows(settings)
    assert sorted(rows) == [("huge", 0), ("huge", 1), ("huge", 2)]
    assert [rows[("huge", i)]["truncated"] for i in range(3)] == [False, False, True]
    assert all(r["error"] is None for r in rows.values())


def test_a_task_failing_on_its_first_attempt_is_retried_without_loss_or_duplicates(spark, make_settings, minilm_dir, documents, write_source, tmp_path):
    from typing import Iterator

    import pyarrow as pa
    from pyspark import TaskContext

    from mlabatch.udfs.embed import Windowing, embed_documents_worker

    failures = tmp_path / "failures"
    failures.mkdir()
    real = embed_documents_worker(str(minilm_dir), Windowing(128, 16, 64, pool=False), 512, "cpu")

    def flaky(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        context = TaskContext.get()
        for rows in real(batches):
            yield rows
            if context.attemptNumber() == 0 and context.partitionId() % 2 == 0:
                (failures / f"partition-{context.partitionId()}").touch()
                raise RuntimeError("simulated executor loss after the first batch")

    settings = make_settings()
    write_source(settings.source.table, documents())
    reference = make_settings(f"target.table={settings.target.table}_reference")
    run_embed(reference)
    stats, _ = run_embed(settings, worker=flaky)

    assert len(list(failures.iterdir())) >= 1, "no task failed: the test did not exercise a retry"
    got, want = target_rows(settings), target_rows(reference)
    assert sorted(got) == sorted(want)
    assert stats.chunks_embedded == len(want)
    for key in want:
        assert got[key]["error"] == want[key]["error"]
        if want[key]["embedding"] is not None:
            np.testing.assert_allclose(got[key]["embedding"], want[key]["embedding"], atol=1e-5)


def test_problems_found_before_any_work(spark, make_settings, tmp_path, documents, write_source):
    from mlabatch.models.registry.resolve import ModelNotFoundError
    from mlabatch.pipelines.errors import CannotRunError
    from mlabatch.pipelines.sources import SourceSchemaError

    settings = make_settings()
    with pytest.raises(CannotRunError, match="source.table"):  # no sample table in its place (issue 13)
        run_embed(settings)

    write_source(settings.source.table, documents())
    with pytest.raises(SourceSchemaError, match="source.text_column"):
        run_embed(make_settings("source.text_column=body"))
    with pytest.raises(ModelNotFoundError, match="models prepare"):
        run_embed(make_settings("model.uri=models:/nothing@here"))

    import pyarrow as pa
    from deltalake import write_deltalake

    write_deltalake(settings.source.table, pa.table({"id": ["a"], "text": [3]}), mode="overwrite",
                    schema_mode="overwrite")
    with pytest.raises(SourceSchemaError, match="not string"):
        run_embed(settings)
    assert not DeltaTable.is_deltatable(settings.target.table)


def test_pool_option_writes_one_vector_per_document(spark, make_settings, embedder, documents, write_source):
    settings = make_settings("embed.long_documents=pool")
    docs = documents()
    write_source(settings.source.table, docs)
    run_embed(settings)
    rows = target_rows(settings)
    assert sorted(rows) == sorted((doc_id, 0) for doc_id in docs)
    expected = embedder.embed_documents([docs["doc-long"], docs["doc-longer"]], window=128, overlap=16)
    for doc_id, vector in zip(("doc-long", "doc-longer"), expected.embeddings):
        ours = np.array(rows[(doc_id, 0)]["embedding"], dtype=np.float32)
        assert float(ours @ vector) / np.linalg.norm(ours) >= 0.9999
    assert rows[("doc-null", 0)]["error"] == "text is null"


def test_the_worker_returns_the_columns_spark_expects(spark):
    """DOCUMENT_ROWS_ARROW (what the worker's Arrow batches hold) is DOCUMENT_ROWS_SCHEMA (what mapInArrow is told)."""
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema
    from pyspark.sql.types import StructType

    from mlabatch.udfs.embed import DOCUMENT_ROWS_ARROW, DOCUMENT_ROWS_SCHEMA

    expected = to_arrow_schema(StructType.fromDDL(DOCUMENT_ROWS_SCHEMA))
    assert expected.names == DOCUMENT_ROWS_ARROW.names
    for want, got in zip(expected, DOCUMENT_ROWS_ARROW):
        if pa.types.is_list(want.type):  # the item's field name (element / item) is not part of the data
            assert pa.types.is_list(got.type) and got.type.value_type == want.type.value_type
        else:
            assert got.type == want.type, want.name
