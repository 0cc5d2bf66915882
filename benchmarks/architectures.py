"""Which families convert, and how faithfully: one row per family x method (exact, compressed), on CPU.

Decoders and most encoders are tiny random-weight models at each family's real head layout
(`models/conversion/tiny_models.py`; no model hub is reachable); BERT is the real all-MiniLM-L6-v2 and smollm2
the real SmolLM2-135M (Llama layout, 9 x 64, 3 KV). Exact is the lossless lift; compressed is calibrated PCA
at DeepSeek's 512+64 for decoders (256+64 for SmolLM2; d_c = d_model / 2, 192 for MiniLM, for encoders),
calibrated on the offline domains. Decoders report the largest logit difference to
transformers over a 128-token sequence, top-1 agreement there, and greedy agreement (the converted side
through the generation engine's paged, absorbed decode) over 4 prompts x 32 tokens; encoders the cosine of
mean-pooled embeddings to transformers' on held-out English prose, code and CJK prose. Decoders whose real
layout is too wide for an exact lift in the kernel get one more exact row at a layout that fits (fewer KV
heads). Refusals are rows with supported=false and the error users see. Random weights have no low-rank structure, so compressed numbers
here are a floor, not what trained checkpoints lose. Writes benchmarks/results/architectures-cpu.jsonl. Run:

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/architectures.py
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mlabatch.models.conversion.calibration import heldout_domains, heldout_texts
from mlabatch.models.conversion.config import CalibrationConfig, ConversionError, MLAConfig
from mlabatch.models.conversion.convert import convert
from mlabatch.models.conversion.fidelity import encoder_fidelity
from mlabatch.models.conversion.tiny_models import build_tiny
from mlabatch.models.registry.bundled import bundled_minilm_dir, prepare_smollm2

RESULTS = Path(__file__).parent / "results" / "architectures-cpu.jsonl"
SMOLLM2_CACHE = Path(tempfile.gettempdir()) / "mlabatch-test-cache" / "smollm2-135m-instruct"  # the tests' copy
DECODERS = ("smollm2", "llama", "llama3-rope", "llama3-yarn", "mistral", "mistral-v0.1-window", "qwen2", "qwen3", "phi3")
ENCODERS = ("bert", "roberta", "xlm-roberta", "distilbert", "mpnet")
CALIBRATION = CalibrationConfig(num_texts=24, max_tokens=128)
REAL = {"bert": "all-MiniLM-L6-v2", "smollm2": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized)"}
GREEDY_PROMPTS, GREEDY_TOKENS, LOGIT_TOKENS = 4, 32, 128
# Real head layouts whose exact lift exceeds the decode kernel (2 x n_kv x head_dim > 512) also get an exact row
# at a layout that fits it: their head_dim, fewer KV heads, the same RoPE and projections.
_HD128 = {"hidden_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 128}
SMALL = {"llama": _HD128, "llama3-yarn": _HD128, "mistral": _HD128, "qwen2": _HD128, "qwen3": _HD128,
         "llama3-rope": {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64},
         "phi3": {"hidden_size": 192, "num_attention_heads": 2, "num_key_value_heads": 2}}
METHODS = ("exact", "compressed", "exact-small")


def source(family: str, root: Path) -> Path:
    """The model directory of a benchmark family (SmolLM2 is prepared once, in SMOLLM2_CACHE)."""
    if family == "bert":
        return bundled_minilm_dir()
    if family == "smollm2":
        return prepare_smollm2(SMOLLM2_CACHE)
    if family.endswith("@small"):
        name = family.removesuffix("@small")
        return build_tiny(name, root / family, **SMALL[name])
    if (root / family / "config.json").is_file():  # built for the other method
        return root / family
    if family == "mistral-v0.1-window":  # Mistral-7B v0.1: a 4,096-token window in a 32k context
        return build_tiny("mistral", root / family, sliding_window=4096, max_position_embeddings=32768)
    return build_tiny(family, root / family)


def request(family: str, kind: str, method: str, d_model: int) -> MLAConfig:
    """The conversion of a row: exact, or compressed (512+64 decoders, half width encoders, 192 MiniLM)."""
    if method == "exact":
        return MLAConfig(method="exact")
    if family == "smollm2":  # 576 wide: 512 would keep nearly every direction; 256+64 is 320 of its 384
        return MLAConfig(d_c=256, d_rope=64, method="pca", calibration=CALIBRATION)
    if kind == "decoder":
        return MLAConfig(d_c=512, d_rope=64, method="pca", calibration=CALIBRATION)
    return MLAConfig(d_c=192 if family == "bert" else d_model // 2, d_rope=0, method="pca", calibration=CALIBRATION)


@torch.no_grad()
def decoder_metrics(src: Path, out: Path) -> dict:
    """Largest logit difference and top-1 agreement over a held-out text, and greedy agreement via the engine."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mlabatch.models.generation.config import EngineConfig, SamplingParams
    from mlabatch.models.generation.engine import load_generator

    tok = AutoTokenizer.from_pretrained(src)
    ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    engine = load_generator(out, "cpu", EngineConfig(cuda_graphs=False))
    ids = tok(" ".join(heldout_texts(3)), return_tensors="pt")["input_ids"][:, :LOGIT_TOKENS]
    want, got = ref(ids).logits[0], engine.model(ids)[0]
    prompts = [tok(t, return_tensors="pt")["input_ids"][0, :32].tolist() for t in heldout_texts(GREEDY_PROMPTS)]
    agree = 0
    for prompt, out_tokens in zip(prompts, engine.generate(prompts, SamplingParams(max_new_tokens=GREEDY_TOKENS,
                                                                                   ignore_eos=True))):
        expected = ref.generate(torch.tensor([prompt]), max_new_tokens=GREEDY_TOKENS, min_new_tokens=GREEDY_TOKENS,
                                do_sample=False)[0, len(prompt):].tolist()
        agree += next((i for i, (x, y) in enumerate(zip(expected, out_tokens.token_ids)) if x != y), GREEDY_TOKENS)
    return {"max_logit_diff": (want - got).abs().max().item(), "logit_scale": want.abs().max().item(),
            "top1_agreement": (want.argmax(-1) == got.argmax(-1)).float().mean().item(),
            "greedy_agreement": agree / (GREEDY_PROMPTS * GREEDY_TOKENS)}


def encoder_metrics(src: Path, out: Path) -> dict:
    """Cosine of the converted model's embeddings to transformers', pooled and per held-out domain."""
    report = encoder_fidelity(src, out, heldout_domains(CalibrationConfig(), 16), 256)
    return {"cosine_mean": report["cosine_mean"], "cosine_p1": report["cosine_p1"], "cosine_min": report["cosine_min"],
            "domains": {name: round(d["cosine_min"], 6) for name, d in report["domains"].items()}}


def row(family: str, method: str, root: Path) -> dict:
    """Convert one family with one method and measure it; a refusal is a row with its error."""
    src = source(f"{family}@small" if method == "exact-small" else family, root)
    config = json.loads((src / "config.json").read_text())
    kind = "encoder" if family in ENCODERS else "decoder"
    d_model = config.get("hidden_size") or config.get("dim")
    heads = config.get("num_attention_heads") or config.get("n_heads")
    out = {"family": family, "model_type": config["model_type"], "kind": kind,
           "weights": REAL.get(family, "random"), "n_heads": heads,
           "n_kv_heads": config.get("num_key_value_heads") or heads,
           "head_dim": config.get("head_dim") or d_model // heads, "method": method.removesuffix("-small"),
           "layout": "kernel-fitting (fewer KV heads)" if method == "exact-small" else "real",
           "rope_type": (config.get("rope_parameters") or {}).get("rope_type") if kind == "decoder" else None}
    cfg = request(family, kind, method.removesuffix("-small"), d_model)
    out.update(conversion_method=cfg.method, d_c=cfg.d_c, d_rope=cfg.d_rope)
    started = time.perf_counter()
    try:
        mla_dir = convert(src, cfg, root / f"{family}-{method}")
    except ConversionError as err:
        return {**out, "supported": False, "error": str(err)}
    mla = json.loads((mla_dir / "mla_config.json").read_text())
    out.update(d_c=mla["d_c"], d_rope=mla["d_rope"], supported=True, error=None,
               kv_values_per_token_before=mla["kv_values_per_token_before"],
               kv_values_per_token_after=mla["kv_values_per_token_after"],
               conversion_seconds=round(time.perf_counter() - started, 1))
    out.update(decoder_metrics(src, mla_dir) if kind == "decoder" else encoder_metrics(src, mla_dir))
    return out


def main() -> None:
    """Every family x method; one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="*", default=[*DECODERS, *ENCODERS])
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlabatch-arch-") as tmp:
        for family in args.families:
            for method in args.methods:
                if method == "exact-small" and family not in SMALL:
                    continue
                rows.append(row(family, method, Path(tmp)))
                print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
