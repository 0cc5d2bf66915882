"""transformers `generate` vs mlabatch's generation engine on the same prompts, one process.

Random weights at real shapes (speed does not depend on the values): SmolLM2-135M and Llama-3.2-1B.
The baseline is the Hugging Face Llama with its dynamic GQA cache; ours is the same shape converted to
MLA widths (SmolLM2 d_c 256 + d_rope 64, 1B d_c 512 + d_rope 64) on the paged latent cache, and, as a
second baseline, the exact lift (cache as large as the GQA cache) where the kernel supports its width.
Greedy, EOS ignored, every row generates exactly `--new` tokens. Both engines warm up on 8 prompts of
the full length first; our engine's start-up (loading, capturing its CUDA graphs) is not timed, like the
baseline's model creation. Before timing, eager and CUDA-graph decode must give the same tokens. Appends JSON lines to benchmarks/results/generate-<device>.jsonl
(or --out) and prints a markdown table.

    python benchmarks/generate.py                                  # GPU: both shapes, batch 64 and 256
    python benchmarks/generate.py --tiny --device cpu              # a seconds-long smoke run
    python benchmarks/generate.py --models llama-3.2-1b --batches 256 --skip-transformers --repeats 5 --note BUILD
                                     # kernel before/after: one engine per process, the median of 5 timed runs
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from devices import device_tag  # benchmarks/devices.py, beside this script

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).parent / "results"
ROPE_THETA = 100000.0

SHAPES = {  # Llama configs of the real models (vocab, layers, hidden, heads, kv heads, mlp)
    "smollm2-135m": dict(vocab_size=49152, num_hidden_layers=30, hidden_size=576, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, mla=(256, 64)),
    "llama-3.2-1b": dict(vocab_size=128256, num_hidden_layers=16, hidden_size=2048, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=8192, mla=(512, 64)),
    "tiny": dict(vocab_size=512, num_hidden_layers=2, hidden_size=128, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=256, mla=(128, 64)),
}


def llama_config(shape: dict):
    """The Hugging Face LlamaConfig of a shape (head_dim 64, tied embeddings, context 8192)."""
    from transformers import LlamaConfig

    sizes = {k: v for k, v in shape.items() if k != "mla"}
    return LlamaConfig(**sizes, head_dim=64, max_position_embeddings=8192, tie_word_embeddings=True,
                       rope_theta=ROPE_THETA, bos_token_id=1, eos_token_id=2)


def mla_model_dir(shape: dict, d_c: int, d_rope: int, has_nope: bool, root: Path) -> Path:
    """A converted-decoder directory with random weights at these MLA widths (no conversion needed for speed)."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models

    from mlabatch.kernels import kernel_dims
    from mlabatch.models.mla_config import MLAModelConfig
    from mlabatch.models.mla_decoder import MLADecoder

    dims = kernel_dims(d_c, d_rope)
    if dims is None:
        raise ValueError(f"the kernel has no head dims for d_c={d_c} d_rope={d_rope}")
    cfg = llama_config(shape).to_dict()
    hd, nkv = 64, shape["num_key_value_heads"]
    mla = MLAModelConfig(architecture="llama", kind="decoder", d_c=d_c, d_rope=d_rope,
                         n_heads=shape["num_attention_heads"], n_kv_heads=nkv, head_dim=hd, has_nope=has_nope,
                         kv_values_per_token_before=2 * nkv * hd, kv_values_per_token_after=d_c + d_rope,
                         conversion={"method": "random weights (benchmark)"}, rope_scaling=1.0,
                         tie_word_embeddings=True, kernel_head_dim_v=dims[0], kernel_d_rope=dims[1])
    out = root / f"mla-{shape['hidden_size']}-{d_c}-{d_rope}"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = MLADecoder(cfg, mla)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.02) if p.dim() > 1 else p.fill_(1.0 if "norm" in name else 0.0)
    model.rope_inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, hd, 2).float() / hd))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(cfg))
    mla.write(out)
    vocab = {f"t{i}": i for i in range(shape["vocab_size"])}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(out / "tokenizer.json"))
    return out


def prompts(n: int, length: int, vocab: int) -> torch.Tensor:
    """n random prompts of `length` tokens (fixed seed; ids above the special tokens)."""
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, vocab, (n, length), generator=g)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def run_transformers(shape: dict, ids: torch.Tensor, new: int, device: torch.device, dtype: torch.dtype) -> dict:
    """New tokens/s of `generate` (greedy, EOS ignored, exactly `new` tokens per row)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(shape)).to(device=device, dtype=dtype).eval()
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    kwargs = dict(attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    model.generate(ids[:8], **{**kwargs, "attention_mask": mask[:8], "max_new_tokens": 4,
                                "min_new_tokens": 4})  # warm-up at the prompt length
    _peak_reset(device)
    start = time.perf_counter()
    out = model.generate(ids, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert out.shape[1] == ids.shape[1] + new
    kv = 2 * shape["num_key_value_heads"] * 64 * shape["num_hidden_layers"] * torch.finfo(dtype).bits // 8
    result = {"engine": "transformers", "new_tokens_per_s": ids.shape[0] * new / seconds, "seconds": seconds,
              "peak_gib": _peak_gib(device), "kv_bytes_per_token": kv}
    del model
    return result


def run_engine(model_dir: Path, ids: torch.Tensor, new: int, device: torch.device, cuda_graphs: bool = True,
               check_graphs: bool = False, repeats: int = 1) -> dict:
    """New tokens/s of our engine, its pool sized to exactly what the batch needs: the run of median time of
    `repeats` runs of the batch on one engine (setting up an engine costs far more than a run)."""
    from mlabatch.models.generation.config import EngineConfig
    from mlabatch.models.generation.engine import load_generator
    from mlabatch.models.generation.config import SamplingParams

    b, t = ids.shape
    need = b * -(-(t + new) // 64)
    blocks = need + need // 100 + 2  # + the scheduler's 1% watermark and the graphs' scratch block
    params = SamplingParams(max_new_tokens=new, ignore_eos=True)
    rows = ids.tolist()
    _peak_reset(device)
    config = EngineConfig(max_batch=b, num_blocks=blocks, cuda_graphs=cuda_graphs, prefill_token_budget=65536)
    gen = load_generator(model_dir, device, config)
    result: dict = {}
    if check_graphs and device.type == "cuda":
        eager = load_generator(model_dir, device, EngineConfig(max_batch=8, num_blocks=8 * 3 + 1, cuda_graphs=False))
        few = [r[:100] for r in rows[:8]]
        want = [o.token_ids for o in eager.generate(few, SamplingParams(max_new_tokens=32, ignore_eos=True))]
        got = [o.token_ids for o in gen.generate(few, SamplingParams(max_new_tokens=32, ignore_eos=True))]
        result["graph_equals_eager"] = got == want
        del eager
    gen.generate(rows[:8], SamplingParams(max_new_tokens=4, ignore_eos=True))  # warm-up at the prompt length
    runs = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        outs = gen.generate(rows, params)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        assert all(o.generated_tokens == new for o in outs)
        st = gen.stats
        runs.append({"new_tokens_per_s": b * new / seconds, "seconds": seconds, "prefill_seconds": st.prefill_seconds,
                     "decode_steps": st.decode_steps, "overlapped_steps": st.overlapped_steps,
                     "decode_ms_per_step": 1e3 * (seconds - st.prefill_seconds) / max(st.decode_steps, 1),
                     "graph_steps": st.graph_steps})
    m = gen.model
    kv = len(m.layers) * m.mla.cache_width * m.embed_tokens.weight.element_size()
    result.update(sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2])
    result.update({"peak_gib": _peak_gib(device), "kv_bytes_per_token": kv,
                   "graph_error": gen.runner.graphs.error if gen.runner.graphs else None})
    if repeats > 1:
        result["decode_ms_per_step_runs"] = [r["decode_ms_per_step"] for r in runs]
    del gen
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "llama-3.2-1b"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny model, batch 4, prompt 40, 12 new tokens")
    parser.add_argument("--skip-transformers", action="store_true")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--note", help="a label stored in every row, e.g. which kernel build ran")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time our engine's batch this many times on one engine and keep the median run")
    args = parser.parse_args()
    if args.tiny:
        args.models, args.batches, args.prompt, args.new = ["tiny"], [4], 40, 12
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = args.out or RESULTS / f"generate-{device_tag(device)}.jsonl"
    root = Path(tempfile.mkdtemp(prefix="mlabatch-genbench-"))
    rows = []
    for model_name in args.models:
        shape = SHAPES[model_name]
        d_c, d_rope = shape["mla"]
        engines = {"mlabatch-mla": mla_model_dir(shape, d_c, d_rope, True, root)}
        lift = shape["num_key_value_heads"] * 64
        try:  # exact lift: every RoPE'd key and value kept, as many cached values as the GQA cache
            engines["mlabatch-exact-lift"] = mla_model_dir(shape, lift, lift, False, root)
        except ValueError as err:
            print(f"{model_name}: no exact-lift baseline: {err}")
        for batch in args.batches:
            ids = prompts(batch, args.prompt, shape["vocab_size"])
            results = {} if args.skip_transformers else {"transformers": run_transformers(shape, ids, args.new,
                                                                                           device, dtype)}
            for i, (engine, model_dir) in enumerate(engines.items()):
                results[engine] = {"engine": engine, **run_engine(model_dir, ids, args.new, device,
                                                                  check_graphs=i == 0 and batch == args.batches[0],
                                                                  repeats=args.repeats)}
            base = results.get("transformers", {}).get("new_tokens_per_s")
            for r in results.values():
                row = {"device": name, "model": model_name, "batch": batch, "prompt_tokens": args.prompt,
                       "new_tokens": args.new, "dtype": str(dtype).removeprefix("torch."), **r,
                       "ratio_to_transformers": r["new_tokens_per_s"] / base if base else None}
                if args.note:
                    row["note"] = args.note
                rows.append(row)
                print(json.dumps(row), flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print("\n| model | batch | engine | new tokens/s | x transformers | peak GiB | KV bytes/token |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio_to_transformers']:.2f}" if r["ratio_to_transformers"] else "-"
        print(f"| {r['model']} | {r['batch']} | {r['engine']} | {r['new_tokens_per_s']:,.0f} | {ratio} | "
              f"{r['peak_gib']:.2f} | {r['kv_bytes_per_token']:,} |")


if __name__ == "__main__":
    main()
