"""sentence-transformers `encode` vs mlabatch's embedding engine on the same documents, one process.

Synthetic documents (~95 words on average, lognormal lengths, words drawn from Python's reference
docs, fixed seed), all-MiniLM-L6-v2, max length 256. The baseline runs at batch 128 and 512 in fp16
on GPU (fp32 on CPU); ours with its default token budget. Cosine agreement is against
sentence-transformers in float32. Prints docs/s, tokens/s and the ratio to the best baseline, and
appends JSON lines to benchmarks/results/embed-<device>.jsonl.

    python benchmarks/embed.py --docs 20000                     # GPU, real weights
    python benchmarks/embed.py --docs 20000 --random-weights    # same shapes, random weights
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from devices import device_tag  # benchmarks/devices.py, beside this script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results"


def synthetic_documents(n: int, seed: int = 0) -> list[str]:
    """n documents of lognormal word counts (median ~80, mean ~95) from a fixed vocabulary."""
    from pydoc_data.topics import topics

    words = " ".join(topics.values()).split()
    rng = np.random.default_rng(seed)
    counts = np.clip(rng.lognormal(mean=np.log(80), sigma=0.6, size=n), 5, 600).astype(int)
    return [" ".join(words[j] for j in rng.integers(0, len(words), size=c)) for c in counts]


def random_weights_copy(model_dir: Path) -> Path:
    """A copy of the model directory with freshly initialized weights at the same shapes."""
    from transformers import BertConfig, BertModel

    out = Path(tempfile.mkdtemp(prefix="minilm-random-"))
    for item in model_dir.iterdir():
        if item.suffix not in (".safetensors", ".bin"):
            (shutil.copytree if item.is_dir() else shutil.copy)(item, out / item.name)
    torch.manual_seed(0)
    BertModel(BertConfig.from_pretrained(model_dir)).save_pretrained(out)
    return out


def timed(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--model-dir", type=Path, default=None, help="default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from sentence_transformers import SentenceTransformer

    from mlabatch.models.registry.load import load_model

    if args.model_dir is None:
        from mlabatch.models.registry.bundled import bundled_minilm_dir
        args.model_dir = bundled_minilm_dir()
    model_dir = random_weights_copy(args.model_dir) if args.random_weights else args.model_dir
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    docs = synthetic_documents(args.docs)

    ours = load_model(model_dir, device)
    reference = SentenceTransformer(str(model_dir), device="cpu")  # fp32 oracle for cosine
    sample = docs[:512]
    oracle = reference.encode(sample, batch_size=64, convert_to_numpy=True)
    baseline = SentenceTransformer(str(model_dir), device=str(device))
    if device.type == "cuda":
        baseline.half()
    baseline.max_seq_length = 256
    tokens = sum(ours.embed_with_counts(docs).token_counts)  # also warms up our engine
    ours.tokenizer.enable_truncation(ours.max_tokens)
    tokenize_s, _ = timed(lambda: ours.tokenizer.encode_batch(docs), torch.device("cpu"))

    def cosine_min(vectors: np.ndarray) -> float:
        return float(((vectors * oracle).sum(1) / np.linalg.norm(vectors, axis=1)
                      / np.linalg.norm(oracle, axis=1)).min())

    records = []
    label = "all-MiniLM-L6-v2" + (" (random weights)" if args.random_weights else "")
    for batch in (128, 512):
        baseline.encode(docs[:batch * 2], batch_size=batch)  # warm-up
        seconds, _ = timed(lambda: baseline.encode(docs, batch_size=batch, convert_to_numpy=True), device)
        vectors = baseline.encode(sample, batch_size=batch, convert_to_numpy=True)
        records.append({"engine": "sentence-transformers", "batch": batch, "seconds": seconds,
                        "cosine_min": cosine_min(vectors)})
    seconds, _ = timed(lambda: ours.embed(docs), device)
    records.append({"engine": "mlabatch", "batch": f"{ours.token_budget} tokens", "seconds": seconds,
                    "cosine_min": cosine_min(ours.embed(sample))})

    best = min(r["seconds"] for r in records if r["engine"] == "sentence-transformers")
    out_path = args.out or RESULTS / f"embed-{device_tag(device)}.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "a") as out:
        for r in records:
            r.update(device=device_name, model=label, docs=len(docs), docs_per_s=len(docs) / r["seconds"],
                     tokens_per_s=tokens / r["seconds"], speedup_vs_best_baseline=best / r["seconds"],
                     date=time.strftime("%Y-%m-%d"))
            out.write(json.dumps(r) + "\n")
    print(f"{len(docs)} documents, {tokens} tokens, {device_name}, {label}; "
          f"tokenizing alone takes {tokenize_s:.2f} s ({len(docs) / tokenize_s:.0f} docs/s) on {os.cpu_count()} cores")
    print(f"{'engine':24s} {'batch':>14s} {'docs/s':>10s} {'tokens/s':>12s} {'x best ST':>9s} {'cos min':>8s}")
    for r in records:
        print(f"{r['engine']:24s} {str(r['batch']):>14s} {r['docs_per_s']:10.0f} {r['tokens_per_s']:12.0f} "
              f"{r['speedup_vs_best_baseline']:9.2f} {r['cosine_min']:8.5f}")


if __name__ == "__main__":
    main()
