"""MLA decode kernel benchmark: FlashMLA's case list plus converted-model dims, with baselines in the same run.

For each case: our cuda backend (the whole flash_mla_with_kvcache call, replayed from a CUDA graph) and a
padded torch SDPA baseline (dense K/V gathered beforehand, masked for lengths and causality), timed as the
median of per-iteration CUDA events with L2 flushed before each iteration; plus one large device-to-device
copy for the bandwidth ceiling. FLOPs and bytes use FlashMLA's formulas. Writes JSON lines and prints a table.

    python benchmarks/kernel.py --out benchmarks/results/kernel-h100.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

import torch
import torch.nn.functional as F

from mlabatch.kernels import flash_mla_with_kvcache, get_mla_metadata

# b, s_q, h_q, h_kv, s_k, d_qk, d_v, varlen
CASES = [
    (128, 1, 16, 1, 4096, 576, 512, False),
    (128, 1, 64, 1, 4096, 576, 512, False),
    (128, 1, 128, 1, 4096, 576, 512, False),
    (128, 2, 128, 1, 4096, 576, 512, False),
    (128, 1, 128, 1, 8192, 576, 512, False),
    (128, 1, 128, 1, 4096, 576, 512, True),
    (256, 1, 12, 1, 1024, 576, 512, False),
    (64, 1, 16, 1, 2048, 576, 512, True),
    (256, 1, 9, 1, 1024, 320, 256, False),
    (256, 1, 12, 1, 1024, 320, 256, False),
    (256, 1, 9, 1, 1024, 384, 384, False),
]
FLUSH_BYTES = 256 << 20


def lengths(b: int, s_k: int, varlen: bool, gen: torch.Generator) -> torch.Tensor:
    """FlashMLA's lengths: all s_k, or normal(s_k, s_k/2) clamped to >= 1."""
    if not varlen:
        return torch.full((b,), s_k, dtype=torch.int32)
    return torch.normal(float(s_k), s_k / 2, (b,), generator=gen).clamp(min=1).to(torch.int32)


def timed(fn, iters: int, flush: torch.Tensor) -> float:
    """Median microseconds of fn over iters runs, each after overwriting a buffer larger than L2."""
    fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) * 1e3


def copy_bandwidth(flush: torch.Tensor) -> float:
    """GB/s of a 2 GiB device-to-device copy, counting bytes read plus written."""
    src = torch.empty(1 << 30, dtype=torch.bfloat16, device="cuda").normal_()
    dst = torch.empty_like(src)
    us = timed(lambda: dst.copy_(src), 20, flush)
    return 2 * src.numel() * 2 / us / 1e3


def run_case(b, s_q, h_q, h_kv, s_k, d_qk, d_v, varlen, flush, iters, sdpa_max_bytes):
    """Return [our record, sdpa record or None] for one case."""
    gen = torch.Generator().manual_seed(b * 7 + s_k + h_q)
    lens = lengths(b, s_k, varlen, gen)
    mean_sk = float(lens.float().mean())
    nb = (lens + 63) // 64
    max_blocks = int(nb.max())
    total = b * max_blocks
    dtype = torch.bfloat16
    k_cache = torch.randn(total, 64, h_kv, d_qk, device="cuda", dtype=dtype) / 10
    q = torch.randn(b, s_q, h_q, d_qk, device="cuda", dtype=dtype) / 10
    table = torch.randperm(total, generator=gen).to(torch.int32).view(b, max_blocks).cuda()
    seqlens = lens.cuda()
    meta, splits = get_mla_metadata(seqlens, s_q * h_q // h_kv, h_kv, head_dim_qk=d_qk)

    def ours():
        return flash_mla_with_kvcache(q, k_cache, table, seqlens, d_v, meta, splits, causal=True, backend="cuda")

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ours()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ours()
    us = timed(graph.replay, iters, flush)
    flops = 2 * s_q * h_q * float(lens.sum()) * (d_qk + d_v)
    nbytes = 2 * (float(lens.sum()) * h_kv * d_qk + b * s_q * h_q * (d_qk + d_v))
    base = dict(device=torch.cuda.get_device_name(), b=b, s_q=s_q, h_q=h_q, h_kv=h_kv, mean_s_k=round(mean_sk, 1),
                d_qk=d_qk, d_v=d_v, varlen=varlen, causal=True)
    recs = [dict(backend="cuda", **base, us=round(us, 1), GBps=round(nbytes / us / 1e3, 1),
                 TFLOPS=round(flops / us / 1e6, 1))]
    # Padded SDPA baseline: heads of one kv head folded into the query length (MQA), dense padded K.
    s_max = max_blocks * 64
    dense_bytes = b * h_kv * s_max * d_qk * 2
    if dense_bytes * 3 <= sdpa_max_bytes:
        kd = k_cache[table.long()].reshape(b, s_max, h_kv, d_qk).permute(0, 2, 1, 3).contiguous()
        vd = kd[..., :d_v].contiguous()
        g = h_q // h_kv
        qd = q.reshape(b, s_q, h_kv, g, d_qk).permute(0, 2, 1, 3, 4).reshape(b, h_kv, s_q * g, d_qk)
        pos = torch.arange(s_max, device="cuda")
        qi = torch.arange(s_q, device="cuda").repeat_interleave(g)
        lim = seqlens[:, None].long() - s_q + 1 + qi[None, :]
        mask = (pos[None, None, :] < lim[:, :, None])[:, None]
        sdpa_us = timed(lambda: F.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, scale=d_qk**-0.5), iters, flush)
        recs.append(dict(backend="torch-sdpa-padded", **base, us=round(sdpa_us, 1),
                         GBps=round(nbytes / sdpa_us / 1e3, 1), TFLOPS=round(flops / sdpa_us / 1e6, 1)))
        del kd, vd, mask
    del k_cache
    torch.cuda.empty_cache()
    return recs


def main() -> None:
    """Run all cases and write JSON lines plus a printed table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/kernel-h100.jsonl")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--sdpa-max-gib", type=float, default=24.0, help="skip the SDPA baseline above this memory")
    args = ap.parse_args()
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    copy_gbps = copy_bandwidth(flush)
    records = [dict(backend="d2d-copy", device=torch.cuda.get_device_name(), GBps=round(copy_gbps, 1))]
    print(f"device-to-device copy: {copy_gbps:.0f} GB/s")
    print(f"{'b':>4} {'s_q':>3} {'h_q':>4} {'s_k':>7} {'dims':>8} {'us':>8} {'GB/s':>7} {'TFLOPS':>7} "
          f"{'%copy':>6} {'sdpa us':>8} {'sdpa/ours':>9}")
    for case in CASES:
        recs = run_case(*case, flush, args.iters, int(args.sdpa_max_gib * 2**30))
        records.extend(recs)
        r = recs[0]
        sd = recs[1]["us"] if len(recs) > 1 else math.nan
        print(f"{r['b']:>4} {r['s_q']:>3} {r['h_q']:>4} {r['mean_s_k']:>7} {r['d_qk']:>4}/{r['d_v']:<3} {r['us']:>8} "
              f"{r['GBps']:>7} {r['TFLOPS']:>7} {100 * r['GBps'] / copy_gbps:>5.0f}% {sd:>8} {sd / r['us']:>8.2f}x",
              flush=True)
    with open(args.out, "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
