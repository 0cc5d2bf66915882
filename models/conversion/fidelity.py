"""Fidelity report of a converted model against its source, on held-out text: what MLA cost and saved.

Measured per held-out domain (`calibration.heldout_domains`: English prose, code, CJK prose, and the user's
calibration table when one was given), never only on the calibration domain, and pooled over all of them
(the top-level numbers). Encoders: cosine of mean-pooled, normalized embeddings (mean, p1, min). Decoders:
perplexity of both, top-1 next-token agreement, and agreement of greedy continuations (converted side
through the generation engine itself, eager: the paged, absorbed decode path that jobs run). Both: KV values
per token per layer and KV bytes per token (all layers, 16-bit) before and after, and seconds taken.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mlabatch.models.conversion.calibration import heldout_domains, heldout_texts
from mlabatch.models.conversion.config import CalibrationConfig
from mlabatch.models.mla_config import MLAModelConfig

KV_BYTES = 2  # bf16/fp16 cache entries


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask[..., None].to(hidden.dtype)
    return F.normalize((hidden * w).sum(1) / w.sum(1).clamp(min=1e-9), dim=-1)


def _cosine_stats(c: torch.Tensor) -> dict:
    c = c.double()
    return {"n_texts": len(c), "cosine_mean": c.mean().item(), "cosine_p1": torch.quantile(c, 0.01).item(),
            "cosine_min": c.min().item()}


@torch.no_grad()
def encoder_fidelity(src_dir: Path, mla_dir: Path, domains: dict[str, list[str]], max_tokens: int) -> dict:
    """Cosine of the converted model's embeddings to the source's on held-out texts, pooled and per domain."""
    from transformers import AutoModel, AutoTokenizer

    from mlabatch.models.mla_encoder import load_mla_encoder

    tok = AutoTokenizer.from_pretrained(src_dir)
    src = AutoModel.from_pretrained(src_dir, dtype=torch.float32).eval()
    mla = load_mla_encoder(mla_dir, "cpu")
    per_domain = {}
    for name, texts in domains.items():
        cos = []
        for i in range(0, len(texts), 8):
            batch = tok(texts[i:i + 8], padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
            ids, mask = batch["input_ids"], batch["attention_mask"]
            a = _mean_pool(src(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
            b = _mean_pool(mla(ids, mask), mask)
            cos.append((a * b).sum(-1))
        per_domain[name] = torch.cat(cos)
    return {**_cosine_stats(torch.cat(list(per_domain.values()))),
            "domains": {name: _cosine_stats(c) for name, c in per_domain.items()}}


def _ppl_stats(nll_src: float, nll_mla: float, agree: float, n: int, n_texts: int) -> dict:
    ppl_src, ppl_mla = float(torch.tensor(nll_src / n).exp()), float(torch.tensor(nll_mla / n).exp())
    return {"n_texts": n_texts, "n_tokens": int(n), "ppl_original": ppl_src, "ppl_converted": ppl_mla,
            "ppl_ratio": ppl_mla / ppl_src, "top1_agreement": agree / n}


@torch.no_grad()
def decoder_fidelity(src_dir: Path, mla_dir: Path, domains: dict[str, list[str]], max_tokens: int,
                     greedy_prompts: int, greedy_tokens: int) -> dict:
    """Perplexities and top-1 agreement (pooled and per domain) and greedy-continuation agreement of converted
    vs source decoder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mlabatch.models.generation.config import EngineConfig, SamplingParams
    from mlabatch.models.generation.engine import load_generator

    tok = AutoTokenizer.from_pretrained(src_dir)
    src = AutoModelForCausalLM.from_pretrained(src_dir, dtype=torch.float32).eval()
    engine = load_generator(mla_dir, "cpu", EngineConfig(cuda_graphs=False))
    mla = engine.model
    sums, per_domain = torch.zeros(4, dtype=torch.float64), {}
    for name, texts in domains.items():
        part = torch.zeros(4, dtype=torch.float64)  # nll source, nll converted, agreeing tokens, tokens
        for text in texts:
            ids = tok(text, truncation=True, max_length=max_tokens, return_tensors="pt")["input_ids"]
            if ids.shape[1] < 2:
                continue
            a, b = src(ids).logits[0, :-1].float(), mla(ids)[0, :-1]
            part += torch.tensor([F.cross_entropy(a, ids[0, 1:], reduction="sum").item(),
                                  F.cross_entropy(b, ids[0, 1:], reduction="sum").item(),
                                  (a.argmax(-1) == b.argmax(-1)).sum().item(), ids.shape[1] - 1])
        per_domain[name] = _ppl_stats(*part.tolist(), len(texts))
        sums += part
    prompts = [tok(t, return_tensors="pt")["input_ids"][0, :32].tolist() for t in heldout_texts(greedy_prompts)]
    ref = [src.generate(torch.tensor([p]), max_new_tokens=greedy_tokens, min_new_tokens=greedy_tokens,
                        do_sample=False)[0, len(p):].tolist() for p in prompts]
    got = [o.token_ids for o in engine.generate(prompts, SamplingParams(max_new_tokens=greedy_tokens, ignore_eos=True))]
    prefix = [next((i for i, (x, y) in enumerate(zip(r, g)) if x != y), greedy_tokens) for r, g in zip(ref, got)]
    return {**_ppl_stats(*sums.tolist(), sum(d["n_texts"] for d in per_domain.values())),
            "greedy_prefix_agreement": sum(prefix) / (greedy_tokens * len(prompts)),
            "greedy_identical": sum(p == greedy_tokens for p in prefix) / len(prompts), "domains": per_domain}


def fidelity_report(src_dir: str | Path, mla_dir: str | Path, num_texts: int = 16, max_tokens: int = 256,
                    greedy_prompts: int = 4, greedy_tokens: int = 32) -> dict:
    """JSON-ready report for a directory written by `convert` against its source directory: up to `num_texts`
    held-out texts per domain, including the conversion's calibration table when it had one."""
    started = time.perf_counter()
    src_dir, mla_dir = Path(src_dir), Path(mla_dir)
    mla = MLAModelConfig.read(mla_dir)
    source = json.loads((mla_dir / "config.json").read_text())
    layers = source.get("num_hidden_layers") or source["n_layers"]  # DistilBERT: n_layers
    calibration = mla.conversion["calibration"]
    domains = heldout_domains(CalibrationConfig(table=calibration.get("table"),
                                                column=calibration.get("column", "text")), num_texts)
    report = {"model": src_dir.name, "architecture": mla.architecture, "method": mla.conversion["method"],
              "d_c": mla.d_c, "d_rope": mla.d_rope,
              "kv_values_per_token_before": mla.kv_values_per_token_before,
              "kv_values_per_token_after": mla.kv_values_per_token_after,
              "kv_bytes_per_token_before": mla.kv_values_per_token_before * layers * KV_BYTES,
              "kv_bytes_per_token_after": mla.kv_values_per_token_after * layers * KV_BYTES,
              "calibration": calibration, "conversion_seconds": mla.conversion["seconds"]}
    if mla.kind == "encoder":
        report.update(encoder_fidelity(src_dir, mla_dir, domains, max_tokens))
    else:
        report.update(decoder_fidelity(src_dir, mla_dir, domains, max_tokens, greedy_prompts, greedy_tokens))
    report["evaluation_seconds"] = round(time.perf_counter() - started, 3)
    return report


def write_report(report: dict, path: str | Path) -> Path:
    """Write a report as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
