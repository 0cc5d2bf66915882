"""Where the generation engine's time goes on a GPU: prefill vs decode, device vs host per decode step, top kernels.

    python benchmarks/profile_generate.py [--model llama-3.2-1b] [--batch 256]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from generate import SHAPES, mla_model_dir, prompts  # noqa: E402


def main() -> None:
    from torch.profiler import ProfilerActivity, profile

    from mlabatch.models.generation.config import EngineConfig
    from mlabatch.models.generation.engine import load_generator
    from mlabatch.models.generation.config import SamplingParams

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "llama-3.2-1b"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=256)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp())
    for name in args.models:
        shape = SHAPES[name]
        model_dir = mla_model_dir(shape, *shape["mla"], True, root)
        rows = prompts(args.batch, args.prompt, shape["vocab_size"]).tolist()
        need = args.batch * -(-(args.prompt + args.new) // 64)
        gen = load_generator(model_dir, "cuda", EngineConfig(max_batch=args.batch, num_blocks=need + need // 100 + 2,
                                                             prefill_token_budget=65536))
        gen.generate(rows[:8], SamplingParams(max_new_tokens=4, ignore_eos=True))
        gen.generate(rows, SamplingParams(max_new_tokens=args.new, ignore_eos=True))
        s = gen.stats
        g = gen.runner.graphs
        graph = g.graphs[max(g.graphs)][0]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        replay_ms = start.elapsed_time(end) / 20
        decode_s = s.seconds - s.prefill_seconds
        print(f"== {name} batch {args.batch}: total {s.seconds:.3f} s, prefill {s.prefill_seconds:.3f} s, "
              f"decode {decode_s:.3f} s over {s.decode_steps} steps = {1e3 * decode_s / s.decode_steps:.2f} ms/step; "
              f"graph replay alone {replay_ms:.2f} ms (at the final lengths); {s.overlapped_steps} steps overlapped", flush=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                gen.model.decode_batch(g.tokens, g.inputs, gen.runner.kv)  # the last step's inputs
            torch.cuda.synchronize()
        print(f"-- eager decode step x5 (batch {args.batch})")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70))
        gen.generate(rows[:32], SamplingParams(max_new_tokens=1))  # warm-up at this shape
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            gen.generate(rows[:32], SamplingParams(max_new_tokens=1))  # one prefill pass, no decode step
            torch.cuda.synchronize()
        print(f"-- prefill of 32 x {args.prompt} tokens")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70))
        del gen
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
