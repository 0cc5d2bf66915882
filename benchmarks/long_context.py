"""Long context, where MLA pays: the Llama-3.1-8B shape, prompt 4,096, 256 new tokens, each engine at the
largest batch that fits in one GPU's memory.

Random weights at the real shape (speed does not depend on the values): 32 layers, hidden 4096, 32 query
heads / 8 KV heads x 128, MLP 14336, vocab 128256, untied head. The baseline is transformers `generate`
(LlamaForCausalLM in bf16, its dynamic GQA cache: 2 x 8 x 128 = 2,048 values per token and layer); ours is
the same shape at MLA 512 + 64 (576 values) on the paged latent cache. Both models are built on the GPU.

Batches: ours fills what is left after the weights and an activation reserve with 4,352-token sequences;
transformers' batch is measured: one prefill at a small batch gives its memory per sequence (cache plus
prefill activations), the largest batch that fits follows, and a smaller one is tried if it does not.
Every row reports new tokens/s end to end (prefill included) and in the decode phase alone, batch, peak
GiB and KV bytes per token; ratios are against transformers' number of the same run. Greedy, EOS
ignored, exactly `--new` tokens per row. Appends JSON lines to benchmarks/results/generate-<device>.jsonl.

    python benchmarks/long_context.py                  # H200: both engines (about 5 minutes)
    python benchmarks/long_context.py --tiny --device cpu   # a seconds-long smoke run of the code path
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
from devices import device_tag  # benchmarks/devices.py, beside this script
from generate import RESULTS, _peak_gib, _peak_reset, prompts  # benchmarks/generate.py

GIB = 2**30
BLOCK = 64  # the engine's page (models/generation/block_manager.BLOCK), for sizing its pool
ENGINE_RESERVE_GIB = 14.0  # left free beside our KV pool: prefill activations (65,536-token passes), graphs
TRANSFORMERS_MARGIN = 0.97  # share of free memory transformers' measured per-sequence footprint may fill
SHAPES = {  # (Llama config, MLA widths d_c + d_rope)
    "llama-3.1-8b": (dict(vocab_size=128256, num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
                          num_key_value_heads=8, head_dim=128, intermediate_size=14336, rope_theta=500000.0,
                          max_position_embeddings=131072, tie_word_embeddings=False), (512, 64)),
    "tiny": (dict(vocab_size=512, num_hidden_layers=2, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=128, intermediate_size=512, rope_theta=500000.0, max_position_embeddings=4096,
                  tie_word_embeddings=False), (512, 64)),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free_gib(device: torch.device) -> float:
    return torch.cuda.mem_get_info(device)[0] / GIB if device.type == "cuda" else 64.0


def _init_(model: torch.nn.Module) -> None:
    """Random weights as a trained model's scale: N(0, 0.02) matrices, unit norms, zero biases."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0 if "norm" in name else 0.0)


def mla_generator(shape: dict, d_c: int, d_rope: int, device: torch.device, dtype: torch.dtype, max_batch: int,
                  num_blocks: int, root: Path):
    """Our engine on an MLA decoder of this shape, built on the device (no weights file)."""
    from tokenizers import Tokenizer, models

    from mlabatch.kernels import kernel_dims
    from mlabatch.models.generation.config import EngineConfig
    from mlabatch.models.generation.engine import Generator
    from mlabatch.models.mla_config import MLAModelConfig
    from mlabatch.models.mla_decoder import MLADecoder

    hd, nkv = shape["head_dim"], shape["num_key_value_heads"]
    head_dim_v, kernel_d_rope = kernel_dims(d_c, d_rope)
    mla = MLAModelConfig(architecture="llama", kind="decoder", d_c=d_c, d_rope=d_rope,
                         n_heads=shape["num_attention_heads"], n_kv_heads=nkv, head_dim=hd, has_nope=True,
                         kv_values_per_token_before=2 * nkv * hd, kv_values_per_token_after=d_c + d_rope,
                         conversion={"method": "random weights (benchmark)"}, rope_scaling=1.0,
                         tie_word_embeddings=shape["tie_word_embeddings"], kernel_head_dim_v=head_dim_v,
                         kernel_d_rope=kernel_d_rope)
    cfg = {**shape, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2}
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = MLADecoder(cfg, mla)
    finally:
        torch.set_default_dtype(default)
    _init_(model)
    unit = model.rope_inv_freq.numel() * 2
    model.rope_inv_freq = 1.0 / (shape["rope_theta"] ** (torch.arange(0, unit, 2, device=device).float() / unit))
    model.eval().fuse()
    model_dir = root / "mla"
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(cfg))
    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(shape["vocab_size"])}, unk_token="t0"))
    config = EngineConfig(max_batch=max_batch, num_blocks=num_blocks, prefill_token_budget=65536)
    return Generator(model, tokenizer, model_dir, config)


def run_mla(shape: dict, widths: tuple[int, int], prompt: int, new: int, device: torch.device, dtype: torch.dtype,
            root: Path, batch: int | None) -> dict:
    """Our engine at the largest batch its pool holds beside the weights (or `batch`)."""
    from mlabatch.models.generation.config import SamplingParams

    d_c, d_rope = widths
    layers = shape["num_hidden_layers"]
    per_seq = math.ceil((prompt + new) / BLOCK) * BLOCK * layers * (d_c + d_rope) * dtype.itemsize
    weights_gib = _weights_gib(shape, widths, dtype)
    if batch is None:
        batch = int((_free_gib(device) - weights_gib - ENGINE_RESERVE_GIB) * GIB // per_seq)
    need = batch * math.ceil((prompt + new) / BLOCK)
    _peak_reset(device)
    gen = mla_generator(shape, d_c, d_rope, device, dtype, batch, need + need // 100 + 2, root)
    rows = prompts(batch, prompt, shape["vocab_size"]).tolist()
    gen.generate(rows[:4], SamplingParams(max_new_tokens=4, ignore_eos=True))  # warm-up at the prompt length
    _sync(device)
    start = time.perf_counter()
    outs = gen.generate(rows, SamplingParams(max_new_tokens=new, ignore_eos=True))
    _sync(device)
    seconds = time.perf_counter() - start
    assert all(o.generated_tokens == new for o in outs)
    decode_seconds = seconds - gen.stats.prefill_seconds  # prefill gives each row its first token
    result = {"engine": "mlabatch-mla", "d_c": d_c, "d_rope": d_rope, "batch": batch,
              "new_tokens_per_s": batch * new / seconds, "decode_tokens_per_s": batch * (new - 1) / decode_seconds,
              "seconds": seconds, "prefill_seconds": gen.stats.prefill_seconds, "peak_gib": _peak_gib(device),
              "kv_bytes_per_token": layers * (d_c + d_rope) * dtype.itemsize,
              "kv_values_per_token_layer": d_c + d_rope, "decode_steps": gen.stats.decode_steps,
              "graph_steps": gen.stats.graph_steps,
              "graph_error": gen.runner.graphs.error if gen.runner.graphs else None}
    del gen, outs
    return result


def _weights_gib(shape: dict, widths: tuple[int, int], dtype: torch.dtype) -> float:
    """Bytes of the MLA model's weights, in GiB."""
    d, h, nkv, hd = shape["hidden_size"], shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"]
    d_c, d_rope = widths
    attn = d * h * hd + d * h * d_rope + d * (d_c + d_rope) + 2 * nkv * hd * d_c + h * hd * d
    mlp = 3 * d * shape["intermediate_size"]
    vocab = shape["vocab_size"] * d * (1 if shape["tie_word_embeddings"] else 2)
    return (shape["num_hidden_layers"] * (attn + mlp) + vocab) * dtype.itemsize / GIB


def _llama(shape: dict, device: torch.device, dtype: torch.dtype):
    """LlamaForCausalLM of the shape with random weights, built on the device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    _init_(model)
    return model.eval()


def _generate(model, ids: torch.Tensor, new: int) -> tuple[float, torch.Tensor]:
    """Seconds and output of a greedy `generate` of exactly `new` tokens per row."""
    mask = torch.ones_like(ids)
    _sync(ids.device)
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         pad_token_id=0)
    _sync(ids.device)
    return time.perf_counter() - start, out


def run_transformers(shape: dict, prompt: int, new: int, device: torch.device, dtype: torch.dtype,
                     batch: int | None, probe: int) -> dict:
    """transformers `generate` at the largest batch that fits (measured), or at `batch`."""
    model = _llama(shape, device, dtype)
    kv = 2 * shape["num_key_value_heads"] * shape["head_dim"] * shape["num_hidden_layers"] * dtype.itemsize
    small = prompts(probe, prompt, shape["vocab_size"]).to(device)
    _generate(model, small, 2)  # warm-up
    tried = []
    if batch is None:  # footprint per sequence of a prefill plus the cache of the whole run, from a small batch
        _peak_reset(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        _generate(model, small, 2)
        step_bytes = (torch.cuda.max_memory_allocated(device) - base) / probe if device.type == "cuda" else 0
        per_seq = max(step_bytes, kv * (prompt + new)) + kv * new
        _peak_reset(device)  # returns cached blocks, so the driver's free memory is what is usable
        batch = max(int(_free_gib(device) * GIB * TRANSFORMERS_MARGIN // per_seq), 1) if per_seq else probe
    while True:
        ids = prompts(batch, prompt, shape["vocab_size"]).to(device)
        try:
            _peak_reset(device)
            prefill_seconds, _ = _generate(model, ids, 1)
            _peak_reset(device)
            seconds, out = _generate(model, ids, new)
            break
        except torch.OutOfMemoryError:
            tried.append(batch)
            del ids
            _peak_reset(device)
            batch = int(batch * 0.92)
            if batch < 1:
                raise
    assert out.shape[1] == prompt + new
    peak = _peak_gib(device)
    decode_seconds = seconds - prefill_seconds
    del model, out
    return {"engine": "transformers", "batch": batch, "batches_out_of_memory": tried,
            "new_tokens_per_s": batch * new / seconds, "decode_tokens_per_s": batch * (new - 1) / decode_seconds,
            "seconds": seconds, "prefill_seconds": prefill_seconds, "peak_gib": peak, "kv_bytes_per_token": kv,
            "kv_values_per_token_layer": 2 * shape["num_key_value_heads"] * shape["head_dim"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama-3.1-8b", choices=sorted(SHAPES))
    parser.add_argument("--prompt", type=int, default=4096)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-mla", type=int, help="fix our batch instead of filling the memory")
    parser.add_argument("--batch-transformers", type=int, help="fix transformers' batch instead of measuring it")
    parser.add_argument("--tiny", action="store_true", help="tiny model, prompt 100, 8 new tokens, batches 3 and 2")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.tiny:
        args.model, args.prompt, args.new, args.batch_mla, args.batch_transformers = "tiny", 100, 8, 3, 2
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape, widths = SHAPES[args.model]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = args.out or RESULTS / f"generate-{device_tag(device)}.jsonl"
    root = Path(tempfile.mkdtemp(prefix="mlabatch-longctx-"))
    base = run_transformers(shape, args.prompt, args.new, device, dtype, args.batch_transformers, probe=4)
    print(json.dumps(base), flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ours = run_mla(shape, widths, args.prompt, args.new, device, dtype, root, args.batch_mla)
    rows = []
    for r in (base, ours):
        row = {"device": name, "model": args.model, "prompt_tokens": args.prompt, "new_tokens": args.new,
               "dtype": str(dtype).removeprefix("torch."), **r,
               "ratio_to_transformers": r["new_tokens_per_s"] / base["new_tokens_per_s"],
               "decode_ratio_to_transformers": r["decode_tokens_per_s"] / base["decode_tokens_per_s"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
    print("\n| engine | batch | KV values/token-layer | new tokens/s | x transformers | decode tokens/s | "
          "x transformers | peak GiB | KV bytes/token |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['batch']} | {r['kv_values_per_token_layer']} | {r['new_tokens_per_s']:,.0f} | "
              f"{r['ratio_to_transformers']:.2f} | {r['decode_tokens_per_s']:,.0f} | "
              f"{r['decode_ratio_to_transformers']:.2f} | {r['peak_gib']:.2f} | {r['kv_bytes_per_token']:,} |")


if __name__ == "__main__":
    main()
