"""Direct embedder vs the full Spark pipeline on the same 2,000 sample chunks, in one process.

(a) `Embedder.embed` on the chunk texts; (b) `mlabatch embed` on a Delta table holding those chunks
as documents (read, hash, incremental anti-join, the chunk-and-embed model stage, MERGE). Both warm: the model is
loaded and Spark's Python workers are started by a small run first. Prints both numbers and the
ratio, and appends JSON lines to benchmarks/results/pipeline-<device>.jsonl.

    .venv/bin/python benchmarks/pipeline.py [--docs 2000]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pyarrow as pa

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from deltalake import write_deltalake  # noqa: E402

from mlabatch.jobs.config import load_settings  # noqa: E402
from mlabatch.jobs.embed import run_embed  # noqa: E402
from mlabatch.jobs.sample_data import sample_documents  # noqa: E402
from mlabatch.models.registry.bundled import bundled_minilm_dir  # noqa: E402
from mlabatch.models.registry.load import load_model  # noqa: E402
from mlabatch.pipelines.spark import get_spark  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def sample_chunks(n: int, embedder) -> list[str]:
    """n chunk texts of the sample documents (cycled if the sample has fewer)."""
    texts = [t for t in sample_documents().column("text").to_pylist() if t and t.strip()]
    chunks = [c.text for windows in embedder.chunker(overlap=32).split(texts) for c in windows]
    return [chunks[i % len(chunks)] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    args = parser.parse_args()

    model_dir = bundled_minilm_dir()
    embedder = load_model(model_dir, "cpu")
    chunks = sample_chunks(args.docs, embedder)
    work = Path(tempfile.mkdtemp(prefix="mlabatch-bench-"))

    def settings(name: str):
        return load_settings([], [
            f"source.table={work}/{name}-source", f"target.table={work}/{name}-target",
            f"model.uri={model_dir}",
            f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db", f"mlflow.registry_uri=sqlite:///{work}/mlflow.db",
            f"mlflow.artifact_location={work}/artifacts",
        ])

    def write_docs(name: str, texts: list[str]) -> None:
        write_deltalake(str(work / f"{name}-source"), pa.table({"id": [f"c{i}" for i in range(len(texts))],
                                                               "text": texts}), mode="overwrite", schema_mode="overwrite")

    embedder.embed(chunks[:64])  # warm-up
    started = time.perf_counter()
    embedder.embed(chunks)
    direct_s = time.perf_counter() - started

    get_spark(settings("warm").spark)  # the session every run below shares
    write_docs("warm", chunks[:64])
    run_embed(settings("warm"))  # starts Python workers and loads the model in each
    write_docs("bench", chunks)
    started = time.perf_counter()
    stats, _ = run_embed(settings("bench"))
    spark_s = time.perf_counter() - started

    device = f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    records = [
        {"path": "direct", "device": device, "docs": len(chunks), "docs_per_s": len(chunks) / direct_s,
         "seconds": direct_s},
        {"path": "spark", "device": device, "docs": len(chunks), "docs_per_s": len(chunks) / spark_s,
         "seconds": spark_s, "embed_stage_seconds": stats.seconds, "chunks_embedded": stats.chunks_embedded},
    ]
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "pipeline-cpu.jsonl", "a") as out:
        for record in records:
            out.write(json.dumps({**record, "date": time.strftime("%Y-%m-%d")}) + "\n")
    print(f"direct embedder : {len(chunks) / direct_s:8.1f} docs/s  ({direct_s:.1f} s)")
    print(f"spark pipeline  : {len(chunks) / spark_s:8.1f} docs/s  ({spark_s:.1f} s; "
          f"chunk+embed stage {stats.seconds:.1f} s, the rest read/anti-join/merge)")
    print(f"ratio spark/direct time: {spark_s / direct_s:.2f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
