"""The embedding job serves an MLA-converted encoder by its registry alias."""
import numpy as np
from deltalake import DeltaTable

from mlabatch.jobs.convert import run_convert
from mlabatch.jobs.embed import run_embed


def test_embed_job_with_converted_encoder_by_alias(spark, make_settings, tmp_path, embedder, documents, write_source):
    convert_settings = make_settings("convert.method=exact", f"convert.output_dir={tmp_path}/minilm-mla",
                                     "convert.name=minilm-mla", "convert.alias=prod")
    run_convert(convert_settings)
    settings = make_settings("model.uri=models:/minilm-mla@prod")
    write_source(settings.source.table, documents())
    stats, _ = run_embed(settings)

    rows = [r for r in DeltaTable(settings.target.table).to_pyarrow_table().to_pylist() if r["error"] is None]
    assert stats.chunks_embedded > len(rows) - 1 > 5
    assert {r["model_version"] for r in rows} == {"minilm-mla/1"}
    ours = np.array([r["embedding"] for r in rows], dtype=np.float32)
    original = embedder.embed([r["chunk_text"] for r in rows])
    assert (ours * original).sum(1).min() >= 0.99999
