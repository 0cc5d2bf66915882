"""The engine called directly vs the Spark worker functions fed as Spark feeds them, one process, one GPU.

What a Spark task on a GPU worker runs is the model stage's function: the embedding stage (`mapInArrow`)
receives Arrow record batches of `spark.max_records_per_batch` rows and returns Arrow batches; the
generation stage (`mapInPandas`) receives them converted to pandas, and its output frames are converted
back to Arrow. This benchmark feeds the real worker functions exactly so (one task for all rows, as with
one task per GPU) and compares them with the engine called once on everything:

(a) embed: 20,000 documents of the benchmarks/embed.py kind, windows of 256 tokens (overlap 32):
    `Embedder.embed_documents` vs `udfs.embed.embed_documents_worker`, three runs each, medians.
(b) generate: 2,048 prompts of 64-1,024 tokens, sorted by length as the pipeline sorts a partition,
    each ending (EOS) after 16-512 new tokens drawn per row, Llama-3.2-1B shape, random weights:
    `Generator.generate` vs `udfs.generate.generate_prompts_worker`. Random weights do not say EOS
    at a chosen length (and say it by chance elsewhere: ignored), so a benchmark hook ends each row at
    its drawn length as EOS would (the engine computes the one extra token it computes for a real EOS).

Appends JSON lines (workload, path, device, items, seconds, throughput, ratio_to_engine on worker rows)
to benchmarks/results/worker-path-<device>.jsonl. Outside Spark (the GPU machine has none) the worker
functions see no TaskContext and pick the visible GPU; model directories need no MLflow.

    python benchmarks/worker_path.py --model-dir <minilm dir> --random-weights     # GPU
    python benchmarks/worker_path.py --docs 400 --prompts 16 --tiny                  # CPU smoke run
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from devices import device_tag  # benchmarks/devices.py, beside this script
from embed import random_weights_copy, synthetic_documents
from generate import SHAPES, mla_model_dir

RESULTS = Path(__file__).parent / "results"
MAX_RECORDS_PER_BATCH = 512  # pipelines.settings' default for spark.max_records_per_batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def as_spark_feeds(table: pa.Table, output_schema: pa.Schema, run) -> tuple[int, float]:
    """Run a mapInPandas function over `table` as one Spark task would: record batches of
    MAX_RECORDS_PER_BATCH rows, each converted to pandas when pulled, each output converted to Arrow.
    Returns (output rows, seconds)."""
    def inputs():
        for batch in table.to_batches(max_chunksize=MAX_RECORDS_PER_BATCH):
            yield batch.to_pandas()

    start = time.perf_counter()
    rows = 0
    for frame in run(inputs()):
        rows += pa.Table.from_pandas(frame, schema=output_schema, preserve_index=False).num_rows
    return rows, time.perf_counter() - start


def as_spark_feeds_arrow(table: pa.Table, output_schema: pa.Schema, run) -> tuple[int, float]:
    """Run a mapInArrow function over `table` as one Spark task would: record batches of
    MAX_RECORDS_PER_BATCH rows in, record batches out (checked against `output_schema`).
    Returns (output rows, seconds)."""
    start = time.perf_counter()
    rows = 0
    for batch in run(iter(table.to_batches(max_chunksize=MAX_RECORDS_PER_BATCH))):
        assert batch.schema == output_schema
        rows += batch.num_rows
    return rows, time.perf_counter() - start


def bench_embed(model_dir: Path, docs: list[str], device: torch.device, repeats: int = 3) -> tuple[dict, dict]:
    """Both paths `repeats` times, alternating; each path's median time (a 20,000-document run is ~2 s)."""
    from mlabatch.models.embedding.engine import load_embedder
    from mlabatch.udfs.embed import DOCUMENT_ROWS_ARROW, Windowing, embed_documents_worker

    windowing = Windowing(max_tokens=256, overlap=32, max_chunks=64, pool=False)
    engine = load_embedder(model_dir, device)
    table = pa.table({"id": [str(i) for i in range(len(docs))], "text": docs, "content_hash": ["h"] * len(docs),
                      "doc_error": pa.nulls(len(docs), pa.string())})
    reports = []
    worker = embed_documents_worker(str(model_dir), windowing, device=str(device), report=reports.append)
    engine.embed_documents(docs[:2000], window=256, overlap=32)  # warm-up
    as_spark_feeds_arrow(table.slice(0, 2000), DOCUMENT_ROWS_ARROW, worker)  # warm-up (loads the process's cached engine)
    engine_times, worker_times = [], []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = engine.embed_documents(docs, window=256, overlap=32)
        _sync(device)
        engine_times.append(time.perf_counter() - start)
        reports.clear()
        chunks, seconds = as_spark_feeds_arrow(table, DOCUMENT_ROWS_ARROW, worker)
        worker_times.append(seconds)
    tokens = int(sum(result.token_counts))
    return ({"items": len(docs), "seconds": float(np.median(engine_times)), "runs": engine_times,
             "chunks": chunks, "tokens": tokens},
            {"items": len(docs), "seconds": float(np.median(worker_times)), "runs": worker_times, "chunks": chunks,
             "tokens": reports[0].tokens_in, "engine_share": reports[0].engine_share})


def _scripted_generator(model_dir: Path, device: torch.device, targets: dict[tuple, int]):
    """The real engine, except that each row ends by EOS after its drawn number of new tokens."""
    from mlabatch.models.generation.config import EngineConfig
    from mlabatch.models.generation.decoders import load_decoder
    from mlabatch.models.generation.engine import Generator
    from mlabatch.models.tokenizer import load_tokenizer

    class Scripted(Generator):
        def _finish_reason(self, seq, token):
            if len(seq.generated) >= targets.get(tuple(seq.prompt[:16]), seq.params.max_new_tokens):
                return "eos"
            return super()._finish_reason(seq, token)

    return Scripted(load_decoder(model_dir, device), load_tokenizer(model_dir), model_dir, EngineConfig())


def bench_generate(shape_name: str, n: int, device: torch.device, lengths: tuple[int, int],
                   outputs: tuple[int, int]) -> tuple[dict, dict]:
    from tokenizers import Tokenizer, pre_tokenizers

    from mlabatch.models.generation.config import SamplingParams
    from mlabatch.udfs import generate as generate_udfs

    shape = SHAPES[shape_name]
    model_dir = mla_model_dir(shape, *shape["mla"], True, Path(tempfile.mkdtemp(prefix="mlabatch-worker-")))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # prompts are "t12 t7 ..." text
    tokenizer.save(str(model_dir / "tokenizer.json"))

    rng = np.random.default_rng(2)
    prompt_lengths = rng.integers(lengths[0], lengths[1] + 1, n)
    ids = [rng.integers(3, shape["vocab_size"], k).tolist() for k in prompt_lengths]
    texts = [" ".join(f"t{i}" for i in row) for row in ids]
    order = np.argsort([len(t) for t in texts], kind="stable")  # sortWithinPartitions(length(text))
    texts = [texts[i] for i in order]
    ids = [ids[i] for i in order]
    targets = {tuple(row[:16]): int(k) for row, k in zip(ids, rng.integers(outputs[0], outputs[1] + 1, n))}
    sampling = SamplingParams(max_new_tokens=outputs[1], ignore_eos=True)  # random weights hit EOS by chance
    generator = _scripted_generator(model_dir, device, targets)
    generator.generate(texts[:16], sampling)  # warm-up
    _sync(device)
    start = time.perf_counter()
    out = generator.generate(texts, sampling)
    _sync(device)
    engine_s = time.perf_counter() - start
    new_tokens = sum(o.generated_tokens for o in out)
    assert new_tokens == sum(targets.values()), "a row did not end at its drawn length"
    engine_batch = float(np.mean(generator.stats.batch_sizes))

    generate_udfs.get_engine = lambda *args: generator  # the worker's process-wide engine is this one
    table = pa.table({"id": [str(i) for i in range(n)], "text": texts, "content_hash": ["h"] * n,
                      "doc_error": pa.nulls(n, pa.string())})
    schema = pa.schema([("id", pa.string()), ("content_hash", pa.string()), ("prompt", pa.string()),
                        ("doc_error", pa.string()), ("text", pa.string()), ("prompt_tokens", pa.int32()),
                        ("generated_tokens", pa.int32()), ("finish_reason", pa.string()), ("truncated", pa.bool_()),
                        ("error", pa.string())])
    reports = []
    worker = generate_udfs.generate_prompts_worker(str(model_dir), sampling, device=str(device),
                                                   report=reports.append)
    rows, worker_s = as_spark_feeds(table, schema, worker)
    assert rows == n and reports[0].tokens_out == new_tokens
    return ({"items": n, "seconds": engine_s, "new_tokens": new_tokens, "mean_decode_batch": engine_batch},
            {"items": n, "seconds": worker_s, "new_tokens": reports[0].tokens_out,
             "engine_share": reports[0].engine_share, "mean_decode_batch": float(np.mean(generator.stats.batch_sizes))})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--prompts", type=int, default=2048)
    parser.add_argument("--model-dir", type=Path, default=None, help="an embedding model (default: bundled MiniLM)")
    parser.add_argument("--random-weights", action="store_true", help="the embedding model's shapes, random weights")
    parser.add_argument("--tiny", action="store_true", help="tiny decoder, short prompts and outputs (smoke run)")
    parser.add_argument("--only", choices=("embed", "generate"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    out = args.out or RESULTS / f"worker-path-{device_tag(device)}.jsonl"
    runs = []
    if args.only in (None, "embed"):
        if args.model_dir is None:
            from mlabatch.models.registry.bundled import bundled_minilm_dir
            args.model_dir = bundled_minilm_dir()
        model_dir = random_weights_copy(args.model_dir) if args.random_weights else args.model_dir
        runs.append(("embed", "docs", bench_embed(model_dir, synthetic_documents(args.docs), device)))
    if args.only in (None, "generate"):
        shape, lengths, outputs = ("tiny", (8, 48), (4, 24)) if args.tiny else ("llama-3.2-1b", (64, 1024), (16, 512))
        runs.append(("generate", "new tokens",
                     bench_generate(shape, args.prompts, device, lengths, outputs)))
    out.parent.mkdir(parents=True, exist_ok=True)
    print("| workload | path | items | seconds | throughput | worker / engine time |")
    print("|---|---|---|---|---|---|")
    for workload, unit, (engine, worker) in runs:
        for path, r in (("engine", engine), ("worker", worker)):
            count = r["items"] if workload == "embed" else r["new_tokens"]
            row = {"workload": workload, "path": path, "device": name, **r, "throughput": count / r["seconds"],
                   "throughput_unit": f"{unit}/s", "date": time.strftime("%Y-%m-%d")}
            if path == "worker":
                row["ratio_to_engine"] = r["seconds"] / engine["seconds"]
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            ratio = f"{row['ratio_to_engine']:.3f}" if path == "worker" else "-"
            print(f"| {workload} | {path} | {r['items']:,} | {r['seconds']:.2f} | {row['throughput']:,.0f} {unit}/s | "
                  f"{ratio} |", flush=True)


if __name__ == "__main__":
    main()
