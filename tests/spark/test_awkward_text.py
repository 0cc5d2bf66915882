"""Texts no model can take, straight from a Delta table: each becomes an error row, and the job completes."""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

from mlabatch.jobs.embed import run_embed
from mlabatch.pipelines.sources import load_texts, one_row_per_id

INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u0000\u0007\u00ad\u2028 \t"  # zero-width, control, format, separators


def write_raw_source(path: str, rows: dict[str, bytes], text_column: str = "text") -> None:
    """A Delta table whose string column holds exactly these bytes, valid UTF-8 or not.

    Arrow checks UTF-8 when it casts binary to string unless told not to; delta-rs then writes and
    reads the bytes as they are, as a table written by another tool may hold them.
    """
    text = pc.cast(pa.array(list(rows.values()), pa.binary()), options=pc.CastOptions(pa.string(),
                                                                                      allow_invalid_utf8=True))
    write_deltalake(path, pa.table({"id": pa.array(list(rows)), text_column: text}), mode="overwrite")


def test_invalid_utf8_and_invisible_only_texts_become_error_rows(spark, make_settings, embedder):
    settings = make_settings()
    good = {"good-1": "Spark pandas UDFs stream Arrow batches.", "good-2": "Delta tables keep every version."}
    write_raw_source(settings.source.table, {
        **{k: v.encode() for k, v in good.items()},
        "bad-utf8": b"caf\xe9 au lait \xff\xfe",  # Latin-1 bytes in a UTF-8 column
        "invisible": INVISIBLE.encode(),
    })

    stats, _ = run_embed(settings)
    rows = {r["id"]: r for r in DeltaTable(settings.target.table).to_pyarrow_table().to_pylist()}

    assert set(rows) == {"good-1", "good-2", "bad-utf8", "invisible"}
    assert rows["bad-utf8"]["error"] == "text is not valid UTF-8"
    assert rows["invisible"]["error"] == "text is empty or whitespace"
    assert rows["bad-utf8"]["embedding"] is None and rows["invisible"]["embedding"] is None
    for doc_id, text in good.items():
        assert rows[doc_id]["error"] is None
        np.testing.assert_allclose(rows[doc_id]["embedding"], embedder.embed([text])[0], atol=1e-5)
    assert (stats.rows_read, stats.errors, stats.duplicate_ids) == (4, 2, 0)

    stats, _ = run_embed(settings)  # the error rows are up to date too: a rerun does nothing
    assert stats.new == 0


def test_sources_mark_invalid_utf8_prompts_before_any_python_worker(spark, tmp_path):
    """The generation pipeline reads prompts through the same source reader: the error names the column."""
    table = str(tmp_path / "prompts")
    write_raw_source(table, {"ok": b"Once upon a time", "bad": b"\xc3\x28 broken"}, text_column="prompt")
    src = load_texts(spark, table, "id", "prompt", ("generate.id_column", "generate.prompt_column"))
    rows = {r["id"]: r for r in one_row_per_id(src).collect()}
    assert (rows["bad"]["text"], rows["bad"]["doc_error"], rows["bad"]["copies"]) == (
        None, "prompt is not valid UTF-8", 1)
    assert (rows["ok"]["text"], rows["ok"]["doc_error"]) == ("Once upon a time", None)
    assert rows["bad"]["content_hash"] != rows["ok"]["content_hash"]
