"""Decode-kernel variants side by side on a Hopper GPU: ours with source edits, FlashMLA with the same ablations.

Each variant of ours is a copy of kernels/ with the text edits in VARIANTS, built in parallel into its own
cache, with its own extension module name and C++ namespace: two builds of one extension in one process
otherwise share a module name and symbols, and the second silently ran the first one's kernels. A FlashMLA
copy (FM_VARIANTS) is built by the side-by-side tool's own `build_flashmla` (its flags, its module name), so a
process loads at most one of them (two FlashMLA builds in one process crashed). Timing is
the FlashMLA tool's (`make`, `graphed`, `timed`: CUDA-graph replay, L2 flushed, median of 30), same inputs
for every variant, rounds in rotating order. The ablations make wrong outputs on purpose: they say what a part
of the kernel costs, not a way to run it.

On the GPU machine, from the project root, with `.fmla/` as ../shared/tools/README.md describes (FlashMLA's
sources and the tool) and the CUTLASS wheel on PYTHONPATH:
    python3 benchmarks/kernel_variants.py --variants base,refill_hot --flashmla fm_hot --out $OUT/ab.jsonl
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WG = "csrc/mla_decode_wgmma.cuh"
NEXT_PAGES = "const int next_a = R ? bt[blk_a + 2 * NS] : 0, next_b = R && blk_b + 2 * NS < last ? bt[blk_b + 2 * NS] : -1;"
L2_PREFETCH = """__device__ __forceinline__ void l2_prefetch(const void* src, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\\n" ::"l"(src), "r"(bytes) : "memory");
}
"""


def prefetch_variant(cond: str, ahead: int) -> list[tuple[str, str, str]]:
    """Edits: where `cond` holds, warpgroup 0's thread 0 prefetches into L2, at the top of each refilling pair, the two
    pages that start `ahead` pages past the refilled pair's first page."""
    anchor = "// Named barriers between the warpgroups"
    return [(WG, anchor, L2_PREFETCH + anchor), (WG, NEXT_PAGES, NEXT_PAGES + f"""
      if constexpr (R && W == 0) {{
        if (wt == 0 && p.k_rs == DQK && ({cond})) {{
          const int pb = blk_a + 2 * NS + {ahead};
          const char* kb = static_cast<const char*>(p.k) + static_cast<int64_t>(h) * p.k_hs * sizeof(T);
          if (pb < last) l2_prefetch(kb + static_cast<int64_t>(bt[pb]) * p.k_bs * sizeof(T), kPage * DQK * sizeof(T));
          if (pb + 1 < last) l2_prefetch(kb + static_cast<int64_t>(bt[pb + 1]) * p.k_bs * sizeof(T), kPage * DQK * sizeof(T));
        }}
      }}""")]


# name -> [(file under kernels/, old text, new text)]; "base" is the checkout as it is.
VARIANTS: dict[str, list[tuple[str, str, str]]] = {
    "base": [],
    # Ablations (timing only): page refills read the part's first page, which stays in L2 (no DRAM traffic) ...
    "refill_hot": [(WG, NEXT_PAGES, "const int next_a = R ? bt[first] : 0, next_b = R && blk_b + 2 * NS < last ? bt[first] : -1;")],
    # ... or are not copied at all (S reads stale pages); no S products; no P V products; S with Q from registers
    # for every slab (the A operand of all nine slabs is the last slab's registers); no exponentials in the softmax.
    "no_refill": [(WG, NEXT_PAGES, "const int next_a = -1, next_b = -1;")],
    "s_skip": [(WG, "      for (int kk = 0; kk < 4; ++kk) {\n        const uint32_t off", "      for (int kk = 0; kk < 0; ++kk) {\n        const uint32_t off")],
    "pv_skip": [(WG, "for (int kk = 0; kk < 4; ++kk) WgmmaRS<T, NH, 1>", "for (int kk = 0; kk < 0; ++kk) WgmmaRS<T, NH, 1>"),
                (WG, "for (int kk = 0; kk < 4; ++kk) Wgmma<T, NH, 1>", "for (int kk = 0; kk < 0; ++kk) Wgmma<T, NH, 1>")],
    "s_rs": [(WG, "if (sl < SL - 1)\n          Wgmma<T, 64, 0>", "if (false && sl < SL - 1)\n          Wgmma<T, 64, 0>")],
    "cheap_exp": [(WG, "s[t] = exp2f(fmaf(s[t], p.scale_log2, -m_use[(t >> 1) & 1]));",
                   "s[t] = fmaf(s[t], p.scale_log2, -m_use[(t >> 1) & 1]) * 0.0001f + 0.5f;")],
    # Candidates (correct outputs). The slab wait with CUTLASS's suspend-time hint:
    "hint": [(WG, "try_wait.parity.shared::cta.b64 P1, [%0], %1;", "try_wait.parity.shared::cta.b64 P1, [%0], %1, %2;"),
             (WG, '::"r"(bar), "r"(phase) : "memory");', '::"r"(bar), "r"(phase), "r"(0x989680) : "memory");')],
    # The pages of the pair after the one being refilled (pf2; pf4: two pairs after) prefetched into L2 by one bulk
    # prefetch per page (contiguous pages only), issued by warpgroup 0 at the top of each refilling pair (pf2_t0: by
    # row tile 0 only).
    "pf2": prefetch_variant("true", 2),
    "pf2_t0": prefetch_variant("mt == 0", 2),
    "pf4": prefetch_variant("true", 4),
    # Not yet run: warpgroup 1 hands its max to warpgroup 0 after its softmax, FlashMLA's order (the eleventh session
    # measured 0.987 on the kernel before the per-warpgroup pair loops).
    "publish_late_wg1": [(WG, "          update_max(mx, f1);\n          publish(kScale1, m_use);\n          softmax(m_use, rowsum);",
                          "          update_max(mx, f1);\n"
                          "          for (int e = 0; e < 2; ++e) m_use[e] = m_run[e] == -INFINITY ? 0.f : m_run[e];\n"
                          "          softmax(m_use, rowsum);\n          __syncwarp();\n          bar_arrive(kScale1);")],
    # The copy loop's test for a missing page (-1) made once per call instead of once per slab.
    "hoist_copy": [(WG, """      for (int sl = lo; sl < hi; ++sl) {
        if (page >= 0) {
          mbar_expect(bar_of(w, sl), SB);
          tma_slab(k_addr(w) + sl * SB, &p.k_map, bar_of(w, sl), sl * 64, h, page);
        } else {
          mbar_arrive(bar_of(w, sl));
        }
      }""", """      if (page < 0) {
        for (int sl = lo; sl < hi; ++sl) mbar_arrive(bar_of(w, sl));
        return;
      }
      for (int sl = lo; sl < hi; ++sl) {
        mbar_expect(bar_of(w, sl), SB);
        tma_slab(k_addr(w) + sl * SB, &p.k_map, bar_of(w, sl), sl * 64, h, page);
      }""")],
    # O rescaled by every factor, as FlashMLA does, instead of skipped where no row max of the warp moved.
    "scale_always": [(WG, "      if (!__any_sync(0xffffffff, f[0] != 1.f || f[1] != 1.f)) return;\n", "")],
    # Warpgroup 1 fences its P tile after issuing its own P V, as FlashMLA does, not before.
    "fence_late": [
        (WG, "a[kk]);\n      fence_proxy_async();\n    };", "a[kk]);\n    };"),
        (WG, "        store_p(a);\n        bar_arrive(kP0);", "        store_p(a);\n        fence_proxy_async();\n        bar_arrive(kP0);"),
        (WG, "        if constexpr (B) pv_local(a, dv_half1);",
         "        if constexpr (B) {\n          pv_local(a, dv_half1);\n          fence_proxy_async();\n        }"),
    ],
}
# The causal mask compiled out of every pair but a part's last too, as the V-tail zeroing is (timing only: wrong
# where s_q > 2 is causal and a sequence's last page is short), to see what the mask's code there costs.
VARIANTS["nomask"] = [(WG, f"mask_rowmax({blk}, mx, LAST || p.causal)", f"mask_rowmax({blk}, mx, LAST)") for blk in ("blk_a", "blk_b")]
VARIANTS["hoist_nomask"] = VARIANTS["hoist_copy"] + VARIANTS["nomask"]
FM_FILE = "sm90/decode/dense/splitkv_mla.cuh"
FM_VARIANTS: dict[str, list[tuple[str, str]]] = {  # the same ablations in FlashMLA's dense decode (every occurrence)
    "fm": [],
    "fm_hot": [("__ldg(block_table_ptr + (block_idx)))", "__ldg(block_table_ptr + 0))")],
    "fm_s_skip": [("    cute::gemm(tiled_mma, thr_mma_", "    if (false) cute::gemm(tiled_mma, thr_mma_")],
    "fm_pv_skip": [("    gemm<false, -1>(tiled_mma, ", "    if (false) gemm<false, -1>(tiled_mma, ")],
}
# b, s_q, h_q, s_k, d_qk, d_v, varlen (h_kv = 1): the side-by-side tool's cases that these measurements use
CASES = [(128, 1, 16, 4096, 576, 512, False), (128, 1, 64, 4096, 576, 512, False), (128, 1, 128, 4096, 576, 512, False),
         (128, 2, 128, 4096, 576, 512, False), (128, 1, 128, 8192, 576, 512, False), (128, 1, 128, 4096, 576, 512, True),
         (256, 1, 32, 700, 576, 512, True), (512, 1, 16, 1500, 576, 512, True), (32, 1, 128, 32768, 576, 512, False),
         (256, 1, 9, 1024, 320, 256, False), (256, 1, 32, 700, 320, 256, True),
         (64, 1, 16, 2048, 576, 512, True)]


def apply_edits(path: Path, edits: list[tuple[str, str]], what: str, every: bool = False) -> None:
    """Replace each old text with its new text in file `path`: it must occur once (or, with `every`, at least once)."""
    text = path.read_text()
    for old, new in edits:
        found = text.count(old)
        if found != 1 and not (every and found > 1):
            raise SystemExit(f"{what}: expected {'some' if every else 'one'} {old[:60]!r} in {path}, found {found}")
        text = text.replace(old, new)
    path.write_text(text)


def make_ours(name: str, work: Path) -> Path:
    """Copy kernels/ into work/name/mlabatch with the variant's edits, module name and namespace; return its root."""
    pkg = work / name / "mlabatch"
    shutil.rmtree(work / name, ignore_errors=True)
    shutil.copytree(ROOT / "kernels", pkg / "kernels", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    (pkg / "__init__.py").touch()
    apply_edits(pkg / "kernels" / "build.py", [('JIT_NAME = "mlabatch_kernels_jit"', f'JIT_NAME = "{module_name(name)}"')], name)
    limits = pkg / "kernels" / "csrc" / "mla_limits.h"  # every source includes it before its namespace
    limits.write_text(f"#define mlabatch mlabatch_{name}\n" + limits.read_text())
    by_file: dict[str, list[tuple[str, str]]] = {}
    for f, old, new in VARIANTS[name]:
        by_file.setdefault(f, []).append((old, new))
    for f, edits in by_file.items():
        apply_edits(pkg / "kernels" / f, edits, name)
    return work / name


def module_name(name: str) -> str:
    """The variant's extension module name (its PyInit symbol), distinct from every other build's."""
    return f"mlabatch_kernels_jit_{name}"


def make_fm(tag: str, flashmla: Path, work: Path) -> Path:
    """Copy FlashMLA's csrc into work/tag with the variant's edits; return the copy's root (the tool builds it)."""
    root = work / tag
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(flashmla / "csrc", root / "csrc")
    apply_edits(root / "csrc" / FM_FILE, FM_VARIANTS[tag], tag, every=True)
    return root


class Log:
    """Prints JSON lines, and writes them to `path` too when one is given."""

    def __init__(self, path: Path | None):
        self.file = path.open("w") if path else None

    def __call__(self, **record) -> None:
        line = json.dumps(record)
        print(line, flush=True)
        if self.file:
            self.file.write(line + "\n")
            self.file.flush()


def start_builds(names: list[str], args: argparse.Namespace) -> dict[str, subprocess.Popen]:
    """Start building every variant of ours, each in its own subprocess, so they compile in parallel."""
    jobs = {}
    for name in names:
        root = make_ours(name, args.work)
        env = dict(os.environ, PYTHONPATH=f"{root}:{os.environ.get('PYTHONPATH', '')}",
                   MLABATCH_KERNELS_CACHE=str(root / "cache"), MAX_JOBS=str(args.jobs))
        code = "from mlabatch.kernels import build; m, why = build.load_extension(); print(why); assert m is not None"
        jobs[name] = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return jobs


def finish_builds(jobs: dict[str, subprocess.Popen], args: argparse.Namespace, emit: Log) -> dict[str, Path]:
    """Wait for the builds start_builds began; return each variant's .so."""
    start = time.time()
    for name, job in jobs.items():
        log = job.communicate()[0]
        if job.returncode != 0:
            raise SystemExit(f"building {name} failed:\n{log[-3000:]}")
        emit(event="built", variant=name, seconds=round(time.time() - start, 1))
    return {n: next((args.work / n / "cache").glob(f"*/{module_name(n)}.so")) for n in jobs}


def load_ours(name: str, so: Path):
    """Import variant `name`'s built extension from `so` under its own module name."""
    spec = importlib.util.spec_from_file_location(module_name(name), so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="base", help=f"ours, comma-separated, the first is the reference: {','.join(VARIANTS)}")
    ap.add_argument("--flashmla", default="", help=f"one FlashMLA copy to time beside them: {','.join(FM_VARIANTS)}")
    ap.add_argument("--flashmla-src", dest="flashmla_src", type=Path, default=ROOT / ".fmla", help="FlashMLA sources (csrc/)")
    ap.add_argument("--tool", type=Path, default=ROOT / ".fmla" / "flashmla_side_by_side.py", help="the side-by-side tool")
    ap.add_argument("--cases", default="", help="indices into CASES (default: all)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=4, help="ninja jobs per build of ours")
    ap.add_argument("--work", type=Path, default=Path("/tmp/mlabatch-variants"))
    ap.add_argument("--out", type=Path, help="also write the JSON lines here")
    args = ap.parse_args()
    fm = args.flashmla or None
    names = args.variants.split(",")
    for n in names:
        if n not in VARIANTS:
            raise SystemExit(f"unknown variant {n!r}; known: {', '.join(VARIANTS)}")
    if fm and fm not in FM_VARIANTS:
        raise SystemExit(f"unknown FlashMLA variant {fm!r}; known: {', '.join(FM_VARIANTS)}")
    emit = Log(args.out)
    import torch

    spec = importlib.util.spec_from_file_location("flashmla_side_by_side", args.tool)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    emit(event="device", name=torch.cuda.get_device_name(), variants=names, flashmla=fm, rounds=args.rounds)
    jobs = start_builds(names, args)
    fm_mod = None
    if fm:  # built here by the tool's own build (its flags), while ours compile
        tool.ARGS = argparse.Namespace(flashmla=str(make_fm(fm, args.flashmla_src, args.work)))
        fm_mod = tool.build_flashmla()
    exts = {n: load_ours(n, so) for n, so in finish_builds(jobs, args, emit).items()}
    sys.path.insert(0, str(args.work / names[0]))
    from mlabatch.kernels import scheduler  # the reference variant's copy (same schedule in every variant)

    flush = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
    cases = [CASES[int(i)] for i in args.cases.split(",")] if args.cases else CASES
    logs: dict[str, list[float]] = {}
    for b, s_q, h_q, s_k, d, dv, varlen in cases:
        gen = torch.Generator().manual_seed(b + s_k + h_q)  # the tool's lengths for this case
        lens = torch.normal(float(s_k), s_k / 2, (b,), generator=gen).clamp(min=s_q).int().tolist() if varlen else [s_k] * b
        q, kc, tb, ln = tool.make(b, s_q, h_q, 1, lens, d, poison=False)
        scale = d**-0.5
        meta, splits = exts[names[0]].mla_metadata(ln, scheduler.num_sm_parts(scheduler.device_num_sms(q.device), s_q * h_q, 1, d))
        calls = {n: (lambda e: lambda: e.mla_decode(q, kc, tb, ln, dv, meta, splits, scale, True))(e) for n, e in exts.items()}
        ref = calls[names[0]]()[0].float()
        diff = {n: float((c()[0].float() - ref).abs().max()) for n, c in calls.items()}
        fns = {n: tool.graphed(c) for n, c in calls.items()}
        if fm_mod is not None and (d, dv) == (576, 512):
            _, _, tsm, ns = fm_mod.dense_decode_fwd(q, kc, dv, ln, tb, scale, True, None, None)
            fns[fm] = tool.graphed(lambda: fm_mod.dense_decode_fwd(q, kc, dv, ln, tb, scale, True, tsm, ns))
        us: dict[str, list[float]] = {n: [] for n in fns}
        order = list(fns)
        for r in range(args.rounds):
            for n in order[r % len(order):] + order[: r % len(order)]:
                us[n].append(round(tool.timed(fns[n], 30, flush), 1))
        best = {n: min(v) for n, v in us.items()}
        for n in best:
            logs.setdefault(n, []).append(math.log(best[names[0]] / best[n]))
        emit(case=[b, s_q, h_q, round(sum(lens) / b), d, dv, varlen], us=us, max_abs_diff_vs_first=diff,
             first_over_variant={n: round(best[names[0]] / best[n], 4) for n in best})
        del q, kc, fns, calls
        torch.cuda.empty_cache()
    emit(geomean_first_over_variant={n: round(math.exp(sum(v) / len(v)), 4) for n, v in logs.items()},
         note="over the cases each variant ran; > 1 means the variant is faster than the first")


if __name__ == "__main__":
    main()
