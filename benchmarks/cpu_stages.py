"""What the CPU side of `mlabatch embed` sustains per core, with a model that costs nothing, and what that
means for a GPU node.

Local Spark on this machine's cores runs the real pipeline (read the Delta source, hash, dedupe, the
incremental anti-join against the target, MERGE) on 20,000 documents of the benchmarks/embed.py kind,
with the model stage replaced by a zero-cost function (one constant vector per document): (1) a first
run into an empty target, (2) a run after every document changed (anti-join against 20,000 target rows,
MERGE updating them). Separately, the model stage's own CPU work, tokenizing and windowing (the
Chunker), on one core. Rates per core are documents per CPU-second that the run consumed (this process,
the Spark JVM and its Python workers, counted with psutil), so they hold even when other work shares
the machine; wall times are reported too. Per-core rates times a node's vCPUs give the ceiling of its
CPU stages, to set against the GPU stage's rate (benchmarks/worker_path.py, measured on an H200).

    .venv/bin/python benchmarks/cpu_stages.py [--docs 20000] [--gpu-docs-per-s 16000]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"  # the tokenizer on one core (must precede its first use)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import pyarrow as pa  # noqa: E402
from deltalake import write_deltalake  # noqa: E402
from embed import synthetic_documents  # noqa: E402  benchmarks/embed.py, beside this script

from mlabatch.jobs.config import load_settings  # noqa: E402
from mlabatch.jobs.embed import run_embed  # noqa: E402
from mlabatch.models.registry.bundled import bundled_minilm_dir  # noqa: E402
from mlabatch.models import tokenizer as tokenizer_threads  # noqa: E402
from mlabatch.models.registry.load import load_model  # noqa: E402
from mlabatch.udfs.embed import DOCUMENT_ROWS_ARROW  # noqa: E402

RESULTS = Path(__file__).parent / "results"
NODES = {"p5.48xlarge (8 GPUs, 192 vCPUs)": (8, 192), "g6e.xlarge (1 GPU, 4 vCPUs)": (1, 4)}


def cpu_seconds() -> float:
    """CPU time used so far by this process and its children (the Spark JVM, its Python workers)."""
    me = psutil.Process()
    return sum(sum(p.cpu_times()[:2]) for p in [me, *me.children(recursive=True)] if p.is_running())


def zero_cost_model(batches):
    """The model stage's output (one window per document, a constant vector) at no cost, as Arrow batches
    of the documents worker's schema (the stage is a mapInArrow)."""
    for docs in batches:
        n = docs.num_rows
        vectors = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * 384),
                                           pa.array(np.zeros(n * 384, dtype=np.float32)))
        yield pa.RecordBatch.from_arrays(
            [docs.column("id"), pa.array(np.zeros(n, np.int32)), docs.column("content_hash"), docs.column("text"),
             pa.array(np.ones(n, np.int32)), pa.array(np.zeros(n, bool)), vectors, docs.column("doc_error")],
            schema=DOCUMENT_ROWS_ARROW)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--gpu-docs-per-s", type=float, default=None,
                        help="the model stage's docs/s on one GPU (worker path, benchmarks/worker_path.py)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="mlabatch-cpu-stages-"))
    model_dir = bundled_minilm_dir()
    docs = synthetic_documents(args.docs)

    def settings(name: str):
        return load_settings([], [
            f"source.table={work}/{name}-source", f"target.table={work}/{name}-target", f"model.uri={model_dir}",
            f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db", f"mlflow.registry_uri=sqlite:///{work}/mlflow.db",
            f"mlflow.artifact_location={work}/artifacts", f"spark.master=local[{cores}]",
            "target.ids_per_increment=100000", "target.max_delete_fraction=1.0"])

    def write(name: str, texts: list[str]) -> None:
        write_deltalake(str(work / f"{name}-source"), pa.table({"id": [f"d{i}" for i in range(len(texts))],
                                                               "text": texts}), mode="overwrite")

    write("warm", docs[:200])
    run_embed(settings("warm"), worker=zero_cost_model, quiet=True)  # JVM, Python workers
    write("bench", docs)
    timings = {}
    for label, texts in (("first run (empty target)", docs), ("every document changed", [t + " x" for t in docs])):
        write("bench", texts)
        started, cpu = time.perf_counter(), cpu_seconds()
        run_embed(settings("bench"), worker=zero_cost_model, quiet=True)
        timings[label] = (time.perf_counter() - started, cpu_seconds() - cpu)

    tokenizer_threads.THREADS = 1  # the model stage's tokenizing on one core, like RAYON_NUM_THREADS above
    chunker = load_model(model_dir, "cpu").chunker(256, 32, 64)
    started, cpu = time.perf_counter(), time.process_time()
    windows = chunker.windows(docs, chunker.encode(docs))  # what the worker does per group (Chunker.stream)
    timings["tokenize"] = (time.perf_counter() - started, time.process_time() - cpu)

    rows = [{"stage": f"read + dedupe + anti-join + MERGE, {label}", "docs": len(docs), "seconds": wall,
             "cpu_seconds": cpu, "cores": cores, "docs_per_s": len(docs) / wall, "docs_per_s_per_core": len(docs) / cpu}
            for label, (wall, cpu) in timings.items() if label != "tokenize"]
    wall, cpu = timings["tokenize"]
    rows.append({"stage": "tokenize + window (model stage's CPU work)", "docs": len(docs), "seconds": wall,
                 "cpu_seconds": cpu, "cores": 1, "docs_per_s": len(docs) / wall, "docs_per_s_per_core": len(docs) / cpu,
                 "windows": len(windows.owner)})
    cpu_core = min(r["docs_per_s_per_core"] for r in rows[:2])  # the slower incremental case
    tokenize_core = rows[2]["docs_per_s_per_core"]
    for node, (gpus, vcpus) in NODES.items():
        cores_per_gpu = vcpus // gpus
        row = {"stage": f"node estimate: {node}", "cpu_stages_docs_per_s": cpu_core * vcpus,
               "tokenize_docs_per_s_per_gpu_task": tokenize_core * cores_per_gpu,
               "assumes": "linear scaling of the per-core rates measured here"}
        if args.gpu_docs_per_s:
            gpu = min(args.gpu_docs_per_s, tokenize_core * cores_per_gpu) * gpus
            row.update(model_stage_docs_per_s=gpu,
                       sustained_docs_per_s=1 / (1 / (cpu_core * vcpus) + 1 / gpu),  # stages run one after another
                       gpu_docs_per_s_assumed=args.gpu_docs_per_s)
        rows.append(row)
    RESULTS.mkdir(exist_ok=True)
    with open(RESULTS / "cpu-stages-cpu.jsonl", "a") as out:
        for r in rows:
            out.write(json.dumps({**r, "date": time.strftime("%Y-%m-%d")}) + "\n")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
