"""Decode-kernel variants side by side on a Hopper GPU: ours with source edits, FlashMLA with the same ablations.

Each variant of ours is a copy of kernels/ with the text edits in VARIANTS, built in parallel into its own
cache, with its own extension module name and C++ namespace: two builds of one extension in one process
otherwise share a module name and symbols, and the second silently ran the first one's kernels. A FlashMLA
copy (FM_VARIANTS) is built by the side-by-side tool's own `build_flashmla` (its flags, its module name), so a
process loads at most one of them (two FlashMLA builds in one process crashed). Timing is
the FlashMLA tool's (`make`, `graphed`, `timed`: CUDA-graph replay, L2 flushed, median of 30), same inputs
for every variant, rounds in rotating order. The tool's flush (`zero_` of 512 MB) leaves L2 full of dirty lines whose
write-back shares the timed call's bandwidth; `--clean-flush` reads the buffer after zeroing it, so L2 holds clean
lines, as after a decode step's weight reads. `--sustained S` times back-to-back replays for S seconds instead (no
flush: the power-limited steady state of a busy GPU) and samples the SM clock (kernel_clocks.py). The ablations
make wrong outputs on purpose: they say what a part of the kernel costs, not a way to run it. `--timeline` adds, per
case, one call of each stamped build (variant `stamps`, FlashMLA `fm_stamps`) and the medians of its per-pair
clock64 stamps (kernel_stamps.py).

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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WG = "csrc/mla_decode_wgmma.cuh"
COMBINE = "csrc/mla_decode.cuh"


def _sibling(name: str):
    """Import benchmarks/<name>.py (the benchmarks folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edit_text(text: str, edits: list[tuple[str, str]], what: str, every: bool = False, where: str = "the text") -> str:
    """`text` with each old text replaced by its new text: it must occur once (or, with `every`, at least once)."""
    for old, new in edits:
        found = text.count(old)
        if found != 1 and not (every and found > 1):
            raise SystemExit(f"{what}: expected {'some' if every else 'one'} {old[:60]!r} in {where}, found {found}")
        text = text.replace(old, new)
    return text


stamps = _sibling("kernel_stamps")
NEXT_PAGES = "const int next_a = R ? bt[blk_a + 2 * NS] : 0, next_b = R && blk_b + 2 * NS < last ? bt[blk_b + 2 * NS] : -1;"
# The refill copies of a pair in the wgmma kernel (warpgroup 0: K0's and K1's first halves; warpgroup 1: the rests),
# and the line above which variants define their device helpers.
REFILL_K0_FIRST = "        if constexpr (R) load_to(2 * cur, next_a, 0, VS);  // K0's V half 0: only this warpgroup read it\n"
REFILL_K1_FIRST = "          if constexpr (R) load_to(2 * cur + 1, next_b, 0, VS);\n"
REFILL_K1_REST = "            load_to(2 * cur + 1, next_b, VS, SL);\n"
REFILL_K0_REST = "            load_to(2 * cur, next_a, VS, SL);\n"
HELPERS_AT = "// Named barriers between the warpgroups"
SOFTMAX_EXP = "s[t] = exp2f(fmaf(s[t], p.scale_log2, -m_use[(t >> 1) & 1]));"
L2_PREFETCH = """__device__ __forceinline__ void l2_prefetch(const void* src, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\\n" ::"l"(src), "r"(bytes) : "memory");
}
"""
WITH_L2_PREFETCH = (WG, HELPERS_AT, L2_PREFETCH + HELPERS_AT)  # the edit that defines l2_prefetch
TMA_PREFETCH = """__device__ __forceinline__ void tma_prefetch_slab(const CUtensorMap* map, int col, int head, int page) {
  asm volatile("cp.async.bulk.prefetch.tensor.4d.L2.global.tile [%0, {%1, %2, %3, %4}];\\n"
               ::"l"(reinterpret_cast<uint64_t>(map)), "r"(col), "r"(0), "r"(head), "r"(page) : "memory");
}
"""
ONE_TILE_ONLY = "gridDim.x != 1 || wt != 0 || page < 0"  # where 24b1abb's kernel skipped its L2 half prefetch
ASK_HALF = "      for (int sl = lo; sl < hi; ++sl) tma_prefetch_slab(&p.k_map, sl * 64, h, page);\n"
K0_FIRST_AND_PREFETCH = ("        if constexpr (R) {\n          load_to(2 * cur, next_a, 0, VS);\n"
                         "          prefetch_to_l2(next_a, VS, SL);\n        }\n")


def half_prefetch(skip: str = ONE_TILE_ONLY, ask: str = ASK_HALF, helper: str = TMA_PREFETCH) -> list[tuple[str, str, str]]:
    """Edits: right after each page's first half is copied, its other half is asked of L2 (`ask`, slabs [lo, hi) of
    `page`, unless `skip`; `helper` defines what `ask` calls), so it comes from L2 when it is copied 1,000-2,000 cycles
    later. With the defaults, the kernel of 24b1abb..0961e51 (the twentieth session took it out: it cost 2-5% with L2
    clean or back to back)."""
    return [
        (WG, HELPERS_AT, helper + HELPERS_AT),
        (WG, "    uint32_t q_last[4][4];", f"    auto prefetch_to_l2 = [&](int page, int lo, int hi) {{\n      if ({skip}) return;\n{ask}"
                                         "    };\n    uint32_t q_last[4][4];"),
        (WG, REFILL_K0_FIRST, K0_FIRST_AND_PREFETCH),
        (WG, REFILL_K1_REST, REFILL_K1_REST + "            prefetch_to_l2(next_b, 0, VS);\n"),
    ]


def prefetch_variant(cond: str, ahead: int) -> list[tuple[str, str, str]]:
    """Edits: where `cond` holds, warpgroup 0's thread 0 prefetches into L2, at the top of each refilling pair, the two
    pages that start `ahead` pages past the refilled pair's first page."""
    return [WITH_L2_PREFETCH, (WG, NEXT_PAGES, NEXT_PAGES + f"""
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
    "cheap_exp": [(WG, SOFTMAX_EXP,
                   "s[t] = fmaf(s[t], p.scale_log2, -m_use[(t >> 1) & 1]) * 0.0001f + 0.5f;")],
    # Candidates (correct outputs). The slab wait with CUTLASS's suspend-time hint:
    "hint": [(COMBINE, "try_wait.parity.shared::cta.b64 P1, [%0], %1;", "try_wait.parity.shared::cta.b64 P1, [%0], %1, %2;"),
             (COMBINE, '::"r"(bar), "r"(phase) : "memory");', '::"r"(bar), "r"(phase), "r"(0x989680) : "memory");')],
    # The pages of the pair after the one being refilled (pf2; pf4: two pairs after) prefetched into L2 by one bulk
    # prefetch per page (contiguous pages only), issued by warpgroup 0 at the top of each refilling pair (pf2_t0: by
    # row tile 0 only).
    "pf2": prefetch_variant("true", 2),
    "pf2_t0": prefetch_variant("mt == 0", 2),
    "pf4": prefetch_variant("true", 4),
    # Warpgroup 1 hands its max to warpgroup 0 after its softmax, FlashMLA's order: 0.987 (call 15-1; the eleventh
    # session measured 0.987 on the kernel before the per-warpgroup pair loops).
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
VARIANTS["stamps"] = stamps.stamp_edits(WG)
# Each slab's expected bytes raised by the waiting warpgroup just before its wait (FlashMLA's place), not by the copying
# thread before each copy; a missing page completes its bytes by `mbarrier.complete_tx` instead of an arrive.
COPY_LOOP = """        if (page >= 0) {
          mbar_expect(bar_of(w, sl), SB);
          tma_slab(k_addr(w) + sl * SB, &p.k_map, bar_of(w, sl), sl * 64, h, page);
        } else {
          mbar_arrive(bar_of(w, sl));
        }"""
SLAB_WAIT = "      mbar_wait(bar_of(2 * set + wg, sl), (phase >> set) & 1);\n"
COMPLETE_TX = """__device__ __forceinline__ void mbar_complete_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.complete_tx.shared::cta.b64 [%0], %1;\\n" ::"r"(bar), "r"(bytes) : "memory");
}
"""
VARIANTS["expect_at_wait"] = [
    (WG, COPY_LOOP, """        if (page >= 0) {
          tma_slab(k_addr(w) + sl * SB, &p.k_map, bar_of(w, sl), sl * 64, h, page);
        } else {
          mbar_complete_tx(bar_of(w, sl), SB);
        }"""),
    (WG, SLAB_WAIT, "      if (wt == 0) mbar_expect(bar_of(2 * set + wg, sl), SB);\n" + SLAB_WAIT),
    (COMBINE, "// Each page is read once per CTA", COMPLETE_TX + "// Each page is read once per CTA"),
]
# The copying thread issues a call's copies first and raises their barriers' expected bytes after them.
VARIANTS["expect_after_copies"] = [
    (WG, COPY_LOOP, """        if (page >= 0) tma_slab(k_addr(w) + sl * SB, &p.k_map, bar_of(w, sl), sl * 64, h, page);
      }
      for (int sl = lo; sl < hi; ++sl) {
        if (page >= 0) {
          mbar_expect(bar_of(w, sl), SB);
        } else {
          mbar_arrive(bar_of(w, sl));
        }"""),
]
# Warpgroup 0 hands its max to warpgroup 1 after its exponentials (FlashMLA's order for warpgroup 0), so the two
# softmaxes do not share the SFUs; its P registers are fenced before the arrive so ptxas cannot sink the exponentials.
VARIANTS["publish_late_wg0"] = [
    (WG, "        publish(kScale0, m_use);\n        softmax(m_use, rowsum);\n",
     "        for (int e = 0; e < 2; ++e) m_use[e] = m_run[e] == -INFINITY ? 0.f : m_run[e];\n"
     "        softmax(m_use, rowsum);\n        fence_regs(s);\n        __syncwarp();\n        bar_arrive(kScale0);\n"),
]
# Warpgroup 0's row sums finished before it waits for warpgroup 1's max (ptxas otherwise sinks their two FADD
# chains below that bar.sync, in front of the refill copies): a store that never runs but depends on them, since
# ptxas keeps shared-memory stores above a bar.sync. In SASS the two chains move between warpgroup 0's first and
# second P V products of page a; 0.9996 flushed, 0.9808 back to back (call 17-3).
VARIANTS["sums_first_wg0"] = [
    (WG, "        bar_wait(kScale1);", "        if (l[0] < 0.f || l[1] < 0.f) s_sum[tr[0]] = 0.f;  // never: l >= 0\n        bar_wait(kScale1);")]
VARIANTS["expect_late_wg0"] = VARIANTS["expect_at_wait"] + VARIANTS["publish_late_wg0"]
VARIANTS["stamps_expect"] = VARIANTS["expect_at_wait"] + stamps.stamp_edits(WG)
VARIANTS["stamps_late_wg0"] = VARIANTS["publish_late_wg0"] + [
    e for e in stamps.stamp_edits(WG) if e[1] != "        publish(kScale0, m_use);\n"] + [
    (WG, "        bar_arrive(kScale0);\n", "        bar_arrive(kScale0);\n STAMP(1);\n")]
# The RoPE slabs (2 * VS .. SL, read by S only) refilled as soon as their page's S is done, with V half 0 of K0
# (warpgroup 0) and before warpgroup 1's own P V wait (warpgroup 1), instead of with the V half 1 slabs after
# the last P V; each S then starts on them, so the V half 1 slabs, requested last, get one slab of S more to land.
VARIANTS["rope_early"] = [
    (WG, "      for (int i = 0; i < SL; ++i) score_slab(set, (i + VS) % SL, i == 0);\n",
     "      for (int sl = 2 * VS; sl < SL; ++sl) score_slab(set, sl, sl == 2 * VS);\n"
     "#pragma unroll\n      for (int sl = VS; sl < 2 * VS; ++sl) score_slab(set, sl, SL == 2 * VS && sl == VS);\n"
     "#pragma unroll\n      for (int sl = 0; sl < VS; ++sl) score_slab(set, sl, false);\n"),
    (WG, REFILL_K0_FIRST,
     "        if constexpr (R) {\n          load_to(2 * cur, next_a, 0, VS);\n          load_to(2 * cur, next_a, 2 * VS, SL);\n        }\n"),
    (WG, "          for (int sl = VS; sl < SL; ++sl) score_slab(nxt, sl, false);\n",
     "          for (int sl = 2 * VS; sl < SL; ++sl) score_slab(nxt, sl, false);\n"
     "#pragma unroll\n          for (int sl = VS; sl < 2 * VS; ++sl) score_slab(nxt, sl, false);\n"),
    (WG, "        if constexpr (B) pv_local(a, dv_half1);\n        bar_wait(kP0);",
     "        if constexpr (B) pv_local(a, dv_half1);\n        if constexpr (R) load_to(2 * cur + 1, next_b, 2 * VS, SL);\n        bar_wait(kP0);"),
    (WG, REFILL_K1_REST, "            load_to(2 * cur + 1, next_b, VS, 2 * VS);\n"),
    (WG, REFILL_K0_REST, "            load_to(2 * cur, next_a, VS, 2 * VS);\n"),
]
# Is DRAM row locality what the split refills cost? Each page copied whole at one point (K0 by warpgroup 1 once
# its last P V is done, K1 by warpgroup 0 once its P V of page b is done: timing only, warpgroup 1's own P V of
# page b is not waited for).
VARIANTS["page_whole"] = [
    (WG, REFILL_K0_FIRST, ""),
    (WG, REFILL_K1_FIRST, "          if constexpr (R) load_to(2 * cur + 1, next_b, 0, SL);\n"),
    (WG, REFILL_K1_REST, ""),
    (WG, REFILL_K0_REST, "            load_to(2 * cur, next_a, 0, SL);\n"),
]
# The L2 prefetch of each page's other half right after its first half's copies: by TMA where a part has one row tile
# (half_prefetch: 24b1abb..0961e51's kernel), by every row tile or by row tile 0 only, or as the seventeenth session's
# whole-page bulk prefetch (pf_page: every tile; pf_page_one_tile: one-tile parts).
ASK_PAGE = ("      l2_prefetch(static_cast<const T*>(p.k) + static_cast<int64_t>(page) * p.k_bs + h * p.k_hs, TL::kTileBytes);\n")
VARIANTS["half_prefetch"] = half_prefetch()
VARIANTS["pf_half"] = half_prefetch("wt != 0 || page < 0")
VARIANTS["pf_half_t0"] = half_prefetch("mt != 0 || wt != 0 || page < 0")
VARIANTS["pf_page"] = half_prefetch("wt != 0 || page < 0", ASK_PAGE, L2_PREFETCH)
VARIANTS["pf_page_one_tile"] = half_prefetch(ask=ASK_PAGE, helper=L2_PREFETCH)
# Part of the softmax's exponentials on the FMA pipe instead of MUFU (FlashAttention-4's trick): both warpgroups'
# softmaxes run at once here, so the two warps of each SM sub-partition share its quarter-rate MUFU. Element t of
# every `every` (t % every == every - 1) takes 2^x = 2^j * p(f), j = round(x) by the 1.5 * 2^23 shift, p a degree-3
# minimax polynomial on [-0.5, 0.5] (relative error 1.0e-4, p(0) = 1 exactly); x is clamped at -127, where the
# result is exactly +0 (masked keys stay 0).
EXP2_FMA = """__device__ __forceinline__ float exp2_fma(float x) {
  x = fmaxf(x, -127.f);
  const float t = x + 12582912.f;
  const float f = x - (t - 12582912.f);
  const float q = fmaf(fmaf(fmaf(0.05500882f, f, 0.24221077f), f, 0.69328291f), f, 1.f);
  return __int_as_float(__float_as_int(q) + (__float_as_int(t) << 23));
}
"""
for every in (2, 4, 8):
    VARIANTS[f"exp_fma{every}"] = [
        (WG, HELPERS_AT, EXP2_FMA + HELPERS_AT),
        (WG, SOFTMAX_EXP, f"s[t] = t % {every} == {every - 1} ? exp2_fma(fmaf(s[t], p.scale_log2, -m_use[(t >> 1) & 1]))"
                          f" : exp2f(fmaf(s[t], p.scale_log2, -m_use[(t >> 1) & 1]));"),
    ]
# Warpgroup 0's refill of K0's V half 0 (and its L2 prefetch of the rest) issued after it hands P of page a over
# (bar_arrive(kP0)) instead of before: the copies' issue (about 520 cycles in the sixteenth session's timeline) then
# leaves the chain kScale1 -> P of page a stored -> warpgroup 1's P V of page a. This and the variants below up to
# the combine kernel's were measured with the L2 half prefetch in the kernel, so they build on half_prefetch().
P0_HANDOVER = """        pack_p(a, f1);  // P of page a under page b's max, for warpgroup 1
        store_p(a);
        bar_arrive(kP0);
"""
VARIANTS["k0_copy_after_p"] = half_prefetch() + [(WG, K0_FIRST_AND_PREFETCH + P0_HANDOVER, P0_HANDOVER + K0_FIRST_AND_PREFETCH)]
# The L2 half prefetch with the page copies' EVICT_FIRST policy: without a hint its lines are normal priority, so each
# may evict one of the flush's dirty lines (a DRAM write) where an evict-first line would be replaced instead.
VARIANTS["pf_evict_first"] = half_prefetch(helper=edit_text(TMA_PREFETCH, [
    ('tile [%0, {%1, %2, %3, %4}];', 'tile.L2::cache_hint [%0, {%1, %2, %3, %4}], %5;'),
    ('"r"(page) : "memory"', '"r"(page), "l"(kL2EvictFirst) : "memory"')], "pf_evict_first", where="TMA_PREFETCH"))
# The next request's first pages (one per page buffer: the ones its prologue copies) asked of L2 by warpgroup 0 once
# this request's last refill is issued (no copies of this request are queued after it), so the next prologue's copies
# come from L2; a request's start otherwise waits for the block table and then DRAM. next_l2: by TMA tensor prefetches
# where a part has one row tile; next_l2_t0: the same by row tile 0 of every part; next_l2_lsu: by warpgroup 0's 128
# threads with `prefetch.global.L2`, one per 128-byte line, so no request queues in front of a TMA copy.
BT_ROW = "    const int* bt = p.block_table + static_cast<int64_t>(req) * p.bt_stride;\n"
STEADY_LOOP = "      for (; pa + 2 * NS < n; pa += 2) pair(pa, warpgroup, F{}, T1{}, T1{});\n"
NEXT_TO_L2 = BT_ROW + """    const int next_last = req < end_req ? (req + 1 == end_req ? end_blk : (p.seqlens[req + 1] + kPage - 1) / kPage) : 0;
    int next_pg[TL::kBufs];
#pragma unroll
    for (int j = 0; j < TL::kBufs; ++j)
      next_pg[j] = req < end_req && j < p.bt_stride ? p.block_table[static_cast<int64_t>(req + 1) * p.bt_stride + j] : -1;
    auto next_to_l2 = [&]() {
      if (@SKIP@) return;
@LINES@#pragma unroll
      for (int j = 0; j < TL::kBufs; ++j)
        if (j < next_last && next_pg[j] >= 0)
@ASK@    };
"""
ASK_TMA = "          for (int sl = 0; sl < SL; ++sl) tma_prefetch_slab(&p.k_map, sl * 64, h, next_pg[j]);\n"
ASK_LSU = """          for (int i = wt; i < kPage * kLines; i += 128) {
            const T* line = static_cast<const T*>(p.k) + static_cast<int64_t>(next_pg[j]) * p.k_bs + (i / kLines) * p.k_rs +
                            h * p.k_hs + (i % kLines) * (128 / sizeof(T));
            asm volatile("prefetch.global.L2 [%0];\\n" ::"l"(line));
          }
"""
LINES = "      constexpr int kLines = DQK * sizeof(T) / 128;  // 128-byte lines of one token's row\n"


def next_request_to_l2(skip: str, ask: str, lines: str = "") -> list[tuple[str, str, str]]:
    """Edits: warpgroup 0 asks L2 for the next request's first pages (`ask`, unless `skip`) after its refilling pairs."""
    code = NEXT_TO_L2.replace("@SKIP@", skip).replace("@LINES@", lines).replace("@ASK@", ask)
    return [(WG, BT_ROW, code), (WG, STEADY_LOOP, STEADY_LOOP + "      if constexpr (decltype(warpgroup)::value == 0) next_to_l2();\n")]


VARIANTS["next_l2"] = half_prefetch() + next_request_to_l2("gridDim.x != 1 || wt != 0", ASK_TMA)
VARIANTS["next_l2_t0"] = half_prefetch() + next_request_to_l2("mt != 0 || wt != 0", ASK_TMA)
VARIANTS["next_l2_lsu"] = half_prefetch() + next_request_to_l2("gridDim.x != 1", ASK_LSU, LINES)
# Before/after for the combine kernel's loads (session 28): the combine before, which read the pieces' log-sum-exps
# three times and the first pair of partials only after both reductions. The text it replaces, and the kernel's
# head before it (for the older combine candidates below), are read from the tree. Call 28-1 (all cases, best of 3,
# the tool's flush): the tree's combine 0.3% faster on the geometric mean (64 x h_q=16 x ~2082 varlen 59.5 -> 58.6
# us, 320/256 h_q=32 x ~711 varlen 53.8 -> 52.8, 320/256 h_q=9 54.1 -> 53.7; cases without split requests within
# 0.4%). Session 16's `combine_fm` (below) moved the first load the same way but read each lse through shared
# memory, one piece in flight.
COMBINE_STORE = "#pragma unroll\n  for (int k = 0; k < kChunks; ++k) {\n    const int c = lane * 4 + k * 128;\n    if (c < DV) *"
COMBINE_PREV = """  float mx = -INFINITY;
  for (int s = lane; s < n; s += 32) mx = fmaxf(mx, p.lse_acc[row_id(s)]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
  float sum = 0.f;
  if (mx != -INFINITY)
    for (int s = lane; s < n; s += 32) sum += __expf(p.lse_acc[row_id(s)] - mx);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
  const bool empty = mx == -INFINITY;
  const float lse = empty ? INFINITY : mx + __logf(sum);
  const int i = qrow / p.g, hq = h * p.g + qrow % p.g;
  T* dst = static_cast<T*>(p.out) + ((static_cast<int64_t>(req) * p.s_q + i) * p.h_q + hq) * DV;
  // Lane l owns columns 4l + 128k: all of a piece's loads for this row are issued before they are summed.
  constexpr int kChunks = (DV + 127) / 128;
  float4 acc[kChunks];
#pragma unroll
  for (int k = 0; k < kChunks; ++k) acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 2
  for (int s = 0; s < n && !empty; ++s) {
    const float w = __expf(p.lse_acc[row_id(s)] - lse);
    const float* src = p.o_acc + row_id(s) * DV;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const int c = lane * 4 + k * 128;
      if (c >= DV) continue;
      const float4 v = *reinterpret_cast<const float4*>(src + c);
      acc[k].x += w * v.x;
      acc[k].y += w * v.y;
      acc[k].z += w * v.z;
      acc[k].w += w * v.w;
    }
  }
"""


def combine_text(start: str, end: str) -> str:
    """The tree's combine kernel text from `start` up to (not including) the next `end`."""
    text = (ROOT / "kernels" / COMBINE).read_text()
    i = text.index(start)
    return text[i:text.index(end, i)]


COMBINE_LOADS = "  // Lane l owns columns 4l + 128k. The loads"
VARIANTS["combine_prev"] = [(COMBINE, combine_text(COMBINE_LOADS, COMBINE_STORE), COMBINE_PREV)]
COMBINE_HEAD = combine_text("constexpr int kCombineWarps = 8;", COMBINE_LOADS)  # the kernel up to its partial loads
# The combine kernel as FlashMLA's does it: the first piece loaded before the log-sum-exp, each lse read from global
# memory once into shared memory and turned into its weight there, the next piece loaded while one is summed.
VARIANTS["combine_fm"] = VARIANTS["combine_prev"] + [
    (COMBINE, COMBINE_HEAD + COMBINE_PREV + COMBINE_STORE[:COMBINE_STORE.index(" = lane")],
     """// As FlashMLA's combine does, the first piece's partial is loaded before the log-sum-exp, whose inputs are read
// from global memory once (into shared memory, then turned into each piece's weight there), and every later
// piece's partial is loaded while the one before is summed.
constexpr int kCombineWarps = 8;
template <typename T, int DV>
__global__ void __launch_bounds__(kCombineWarps * 32) mla_combine_kernel(const __grid_constant__ MlaParams p) {
  extern __shared__ float s_weight[];  // [kCombineWarps][p.num_parts]: a row's pieces' lse, then their weights
  const int req = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int gr = blockIdx.y * kCombineWarps + warp;
  const int base = p.num_splits[req], n = p.num_splits[req + 1] - base;  // written before the decode grid
  if (n <= 1 || gr >= p.h_kv * p.rows) return;
  asm volatile("griddepcontrol.wait;\\n" ::: "memory");
  const int h = gr / p.rows, qrow = gr % p.rows;
  auto row_id = [&](int s) { return (static_cast<int64_t>(base + s) * p.h_kv + h) * p.rows + qrow; };
  // Lane l owns columns 4l + 128k of the row; `piece` holds them for one piece.
  constexpr int kChunks = (DV + 127) / 128;
  float4 piece[kChunks] = {};
  auto load_piece = [&](int s) {
    const float* src = p.o_acc + row_id(s) * DV;
#pragma unroll
    for (int k = 0; k < kChunks; ++k)
      if (lane * 4 + k * 128 < DV) piece[k] = *reinterpret_cast<const float4*>(src + lane * 4 + k * 128);
  };
  load_piece(0);
  float* w = s_weight + warp * p.num_parts;  // a request has at most one piece per part
  float mx = -INFINITY;
  for (int s = lane; s < n; s += 32) {
    w[s] = p.lse_acc[row_id(s)];
    mx = fmaxf(mx, w[s]);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
  const bool empty = mx == -INFINITY;
  float sum = 0.f;
  for (int s = lane; s < n && !empty; s += 32) sum += __expf(w[s] - mx);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
  const float lse = empty ? INFINITY : mx + __logf(sum);
  for (int s = lane; s < n; s += 32) w[s] = __expf(w[s] - lse);
  __syncwarp();
  float4 acc[kChunks];
#pragma unroll
  for (int k = 0; k < kChunks; ++k) acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 1
  for (int s = 0; s < n && !empty; ++s) {
    const float ws = w[s];
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      acc[k].x += ws * piece[k].x;
      acc[k].y += ws * piece[k].y;
      acc[k].z += ws * piece[k].z;
      acc[k].w += ws * piece[k].w;
    }
    if (s + 1 < n) load_piece(s + 1);
  }
  const int i = qrow / p.g, hq = h * p.g + qrow % p.g;
  T* dst = static_cast<T*>(p.out) + ((static_cast<int64_t>(req) * p.s_q + i) * p.h_q + hq) * DV;
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int c"""),
    (COMBINE, """  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(p.b, (p.h_kv * p.rows + kCombineWarps - 1) / kCombineWarps);
  cfg.blockDim = dim3(kCombineWarps * 32);
""",
     """  const size_t smem = kCombineWarps * p.num_parts * sizeof(float);
  if (smem > 48 * 1024) cudaFuncSetAttribute(mla_combine_kernel<T, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(p.b, (p.h_kv * p.rows + kCombineWarps - 1) / kCombineWarps);
  cfg.blockDim = dim3(kCombineWarps * 32);
  cfg.dynamicSmemBytes = smem;
""")
]
# A request's start waits for its length and, beside it, the block-table entries of its first pages (session 21).
# first_after_len: the entries read after the length, as before, so the A/B reruns at HEAD (--variants
# first_after_len,base). meta_ahead: the part's later requests find their length and entries in shared memory,
# copied there (4-byte cp.async by thread 0) under the request before, so no global load precedes their copies.
FIRST_PAGES = """    int first_page[NS];
#pragma unroll
    for (int set = 0; set < NS; ++set) {
      const int blk = first + 2 * set + wg;
      first_page[set] = blk < p.bt_cols ? bt[blk] : -1;
    }
    const int len = p.seqlens[req];
"""
VARIANTS["first_after_len"] = [
    (WG, FIRST_PAGES, "    const int len = p.seqlens[req];\n"),
    (WG, "blk < last ? first_page[set] : -1", "blk < last ? bt[blk] : -1"),
]
CP_ASYNC4 = """__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\\n" ::"r"(dst), "l"(src) : "memory");
}
// Each page is read once per CTA"""
VARIANTS["meta_ahead"] = [
    (COMBINE, "// Each page is read once per CTA", CP_ASYNC4),
    (WG, "bufs * kSlabs * 8; }", "bufs * kSlabs * 8 + (1 + bufs) * 4; }"),
    (WG, "  auto bar_of = [&](int w, int sl) { return bars + (w * SL + sl) * 8; };\n",
     "  auto bar_of = [&](int w, int sl) { return bars + (w * SL + sl) * 8; };\n"
     "  const uint32_t ahead = bars + TL::kBufs * SL * 8;  // the next request's length, then its first pages' entries\n"
     "  const int* s_ahead = reinterpret_cast<const int*>(smem + (ahead - base));\n"),
    (WG, FIRST_PAGES, """    int first_page[NS], len;
    if (req == begin_req) {
#pragma unroll
      for (int set = 0; set < NS; ++set) {
        const int blk = first + 2 * set + wg;
        first_page[set] = blk < p.bt_cols ? bt[blk] : -1;
      }
      len = p.seqlens[req];
    } else {
      len = s_ahead[0];
#pragma unroll
      for (int set = 0; set < NS; ++set) first_page[set] = s_ahead[1 + 2 * set + wg];
    }
"""),
    (WG, "    cp_async_wait<0>();\n    fence_proxy_async();\n    __syncthreads();\n",
     """    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    if (tid == 0 && req < end_req) {  // the next request's, read at its top (it starts at block 0)
      cp_async4(ahead, p.seqlens + req + 1);
      for (int w = 0; w < TL::kBufs && w < p.bt_cols; ++w) cp_async4(ahead + 4 * (1 + w), bt + p.bt_stride + w);
      cp_async_commit();
    }
"""),
    (WG, "    __syncthreads();  // the page buffers, P and the sums are reused by the next request of this part\n",
     "    cp_async_wait<1>();  // thread 0: the next request's entries (the next Q's copies, the last group, may be in flight)\n"
     "    __syncthreads();  // the page buffers, P and the sums are reused by the next request of this part\n"),
]
# Where a request's pieces start and how many there are, read at the request's top beside its length (both
# kernels), so the epilogue does not wait on two global loads after its barrier before writing O or the partials.
# H200 (call 26-3): 1.0009 after the flush, 0.9926 back to back; with meta_ahead 0.9972 / 0.9954.
SPLIT_LINE = "    const int split = req == begin_req ? begin_split : 0;\n"
SPLITS_AT_EPILOGUE = "    const int n_split = p.num_splits[req + 1] - p.num_splits[req];\n    const int slot = p.num_splits[req] + split;\n"
VARIANTS["splits_ahead"] = [
    (f, old, new) for f in (WG, COMBINE) for old, new in (
        (SPLIT_LINE, SPLIT_LINE + "    const int slot = p.num_splits[req] + split, n_split = p.num_splits[req + 1] - p.num_splits[req];\n"),
        (SPLITS_AT_EPILOGUE, ""))]
VARIANTS["splits_meta_ahead"] = VARIANTS["splits_ahead"] + VARIANTS["meta_ahead"]
# The scheduler's cost per request, in pages (FlashMLA's 5 in the tree): each variant schedules with its own.
for cost in (2, 3):
    VARIANTS[f"overhead{cost}"] = [("limits.py", "FIXED_OVERHEAD = 5 ", f"FIXED_OVERHEAD = {cost} ")]
# The exponentials pipelined into the P V product of the warpgroup's own page: one k16 step's P (16 keys) computed,
# packed and its wgmma issued before the next step's exponentials, so the tensor cores start on the first 16 keys
# while the MUFU works on the rest (the P V product waited for all 64 keys' exponentials). O is rescaled first (its
# factor is known once the max is), and a last pair's V tails are zeroed before. Each step's S registers go through an
# empty asm after the step before is issued, so the compiler keeps that order in PTX. `pipe_wg0` / `pipe_wg1` /
# `pipe_both`: in warpgroup 0's page a, warpgroup 1's page b (whose P also goes to its P tile a step at a time), both.
SOFTMAX_PV = """    // P = exp2(S * scale_log2 - m_use) a k16 step at a time, each step's P V product issued once its P is packed
    // (and, with `store`, put in this warpgroup's P tile), so the products start while later exponentials run.
    auto softmax_pv = [&](const float (&m_use)[2], float (&rowsum)[2], uint32_t (&a)[4][4], uint32_t dv, bool store) {
      rowsum[0] = rowsum[1] = 0.f;
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
#pragma unroll
        for (int t = 8 * kk; t < 8 * kk + 8; ++t) {
          s[t] = exp2f(fmaf(s[t], p.scale_log2, -m_use[(t >> 1) & 1]));
          rowsum[(t >> 1) & 1] += s[t];
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) a[kk][r] = Pack<T>::two(s[8 * kk + 2 * r], s[8 * kk + 2 * r + 1]);
        if (store) stmatrix_x4(p_row + ((p_chunk ^ (2 * kk)) << 4), a[kk]);
        wgmma_fence();
        if (kk == 0) fence_regs(o);
        WgmmaRS<T, NH, 1>::run(o, a[kk], gmma_desc(dv + ((kk * 16 * 128) >> 4)), 1);
#pragma unroll
        for (int t = 8 * kk + 8; t < 32; ++t) asm volatile("" : "+f"(s[t]));
      }
      wgmma_commit();
      fence_regs(o);
      if (store) fence_proxy_async();
    };
"""
PIPE_WG0 = [(WG, "    // O and l times a factor per row;", SOFTMAX_PV + "    // O and l times a factor per row;"),
            (WG, """        publish(kScale0, m_use);
        softmax(m_use, rowsum);
        scale_o(f0);
        l[0] += rowsum[0];
        l[1] += rowsum[1];
        const float one[2] = {1.f, 1.f};
        pack_p(a, one);
        if constexpr (LAST) zero_tail(2 * cur, 0, blk_a);
        pv_local(a, dv_half0);
""", """        publish(kScale0, m_use);
        scale_o(f0);
        if constexpr (LAST) zero_tail(2 * cur, 0, blk_a);
        softmax_pv(m_use, rowsum, a, dv_half0, false);
        l[0] += rowsum[0];
        l[1] += rowsum[1];
""")]
PIPE_WG1 = [(WG, """          publish(kScale1, m_use);
          softmax(m_use, rowsum);
        } else {""", """          publish(kScale1, m_use);
        } else {"""),
            (WG, """        scale_o(f);
        l[0] += rowsum[0];
        l[1] += rowsum[1];
        if constexpr (B) {
          const float one[2] = {1.f, 1.f};
          pack_p(a, one);
          store_p(a);
          if constexpr (LAST) zero_tail(2 * cur + 1, 1, blk_b);
        }
        if constexpr (LAST) zero_tail(2 * cur, 1, blk_a);
        if constexpr (B) pv_local(a, dv_half1);
""", """        scale_o(f);
        if constexpr (B && LAST) zero_tail(2 * cur + 1, 1, blk_b);
        if constexpr (LAST) zero_tail(2 * cur, 1, blk_a);
        if constexpr (B) softmax_pv(m_use, rowsum, a, dv_half1, true);
        l[0] += rowsum[0];
        l[1] += rowsum[1];
""")]
VARIANTS["pipe_wg0"] = PIPE_WG0
VARIANTS["pipe_wg1"] = [PIPE_WG0[0]] + PIPE_WG1
VARIANTS["pipe_both"] = PIPE_WG0 + PIPE_WG1
# Warpgroup 0 from its wait for the P V product of page a to handing P of page a over, as the kernel has it, in
# pieces that the variants below put in other orders.
WG0_WAIT = "        wgmma_wait<0>();\n        fence_regs(o);\n"
WG0_F1 = """        bar_wait(kScale1);  // warpgroup 1's max and the factor from page a's max to it
        float f1[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          f1[e] = s_scale[64 + tr[e]];
          m_run[e] = s_m[64 + tr[e]];
        }
"""
WG0_REPACK = "        pack_p(a, f1);  // P of page a under page b's max, for warpgroup 1\n"
WG0_HANDOVER = WG0_WAIT + WG0_F1 + REFILL_K0_FIRST + P0_HANDOVER
# Warpgroup 0 hands P of page a (under page b's max) to warpgroup 1 without first waiting for its own P V of page a:
# the rescaled P goes to 16 other registers, so the P V product still reading the first ones may run on; the wait
# (and K0's V half refill, which needs it) comes after the hand-over. `pipe_p0_early`: with `pipe_both`.
P0_EARLY = [(WG, WG0_HANDOVER, WG0_F1 + """        uint32_t a1[4][4];
        pack_p(a1, f1);  // P of page a under page b's max, for warpgroup 1
        store_p(a1);
        bar_arrive(kP0);
""" + WG0_WAIT + REFILL_K0_FIRST)]
VARIANTS["p0_early"] = P0_EARLY
VARIANTS["pipe_p0_early"] = VARIANTS["pipe_both"] + P0_EARLY
# Warpgroup 0 repacks P of page a under page b's max only where a row max of the warp moved: otherwise its registers
# already hold that P bit for bit (packed times 1), so 32 multiplies and 16 packs leave the path to warpgroup 1's P V
# of page a. `repack_skip_early`: such a warp also hands P over before waiting for its own P V (nothing it writes is
# read by that product), and the K0 refill follows the hand-over.
MOVED = "__any_sync(0xffffffff, f1[0] != 1.f || f1[1] != 1.f)"
VARIANTS["repack_skip"] = [(WG, WG0_REPACK, f"        if ({MOVED}) pack_p(a, f1);\n")]
VARIANTS["repack_skip_early"] = [(WG, WG0_HANDOVER, WG0_F1 + f"        if ({MOVED}) {{\n" + WG0_WAIT.replace("        ", "          ")
                                  + "          pack_p(a, f1);\n        }\n        store_p(a);\n        bar_arrive(kP0);\n"
                                  + WG0_WAIT + REFILL_K0_FIRST)]
# The kernel before the running max got its slack (kMaxSlack): the max moves on every new maximum, so a warp rescales
# O on most pages. The twenty-fifth session's before/after.
VARIANTS["eager_max"] = [(WG, "        const float m_new = mx[e] > m_run[e] + kMaxSlack ? mx[e] : m_run[e];\n",
                          "        const float m_new = fmaxf(m_run[e], mx[e]);\n")]
# Split requests (timing ablations, wrong outputs where a request is split): the combine grid not launched after the
# wgmma kernel (no_combine); the pieces' fp32 partials and their lse not written (no_partials). H200 (calls 26-1,
# 26-2): without the combine grid the split cases run 1-8% faster; without the partials within 1%, ~4103 varlen 1.7%.
WG_COMBINE_LAUNCH = "  kernel<<<grid, TL::kThreads, TL::kSmem, stream>>>(p);\n  launch_combine<T, DV>(p, stream);\n"
VARIANTS["no_combine"] = [(WG, WG_COMBINE_LAUNCH, "  kernel<<<grid, TL::kThreads, TL::kSmem, stream>>>(p);\n")]
PARTIAL_STORE = """        float* dst = p.o_acc + row_id * DV + col0;
#pragma unroll
        for (int t = 0; t < NH / 8; ++t)
          *reinterpret_cast<float2*>(dst + t * 8) = make_float2(o[4 * t + 2 * e] * inv[e], o[4 * t + 2 * e + 1] * inv[e]);
"""  # a split piece's fp32 partial, as the wgmma kernel writes it
VARIANTS["no_partials"] = [(WG, PARTIAL_STORE, PARTIAL_STORE.replace("t < NH / 8; ++t)", "t < NH / 8 && n_split < 0; ++t)"))]
# The combine in the decode kernel (candidate; counters in a zero-initialized device array that the last piece resets,
# enough for the measured cases): every piece of a split request writes its partial as now, then counts itself in
# (after a fence); the piece that counts last merges the other pieces' partials into its own O registers and writes
# the output as a whole request does. No combine grid runs after the decode grid. H200 (call 26-1): 0.974, up to
# 0.888: the last piece is nearly always a part's last request, so its merge is a serial tail on the slowest parts.
WG_EPILOGUE = """    float inv[2];  // 1 / row sum, 0 for an empty row
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float lt = s_sum[tr[e]] + s_sum[64 + tr[e]];
      const bool empty = !(lt > 0.f);
      inv[e] = empty ? 0.f : 1.f / lt;
      const float lse_v = empty ? (n_split == 1 ? INFINITY : -INFINITY) : (m_run[e] + __log2f(lt)) * 0.69314718055994531f;
      if (qrow[e] >= p.rows) continue;
      const int i = qrow[e] / p.g, hq = h * p.g + qrow[e] % p.g;
      const int col0 = wg * NH + (lane & 3) * 2;
      if (n_split == 1) {
        if (wg == 0 && (lane & 3) == 0) p.lse[(static_cast<int64_t>(req) * p.h_q + hq) * p.s_q + i] = lse_v;
      } else {
        const int64_t row_id = (static_cast<int64_t>(slot) * p.h_kv + h) * p.rows + qrow[e];
""" + PARTIAL_STORE + """        if (wg == 0 && (lane & 3) == 0) p.lse_acc[row_id] = lse_v;
      }
    }
    if (n_split == 1) {
"""
COMBINE_HERE = """    float inv[2], lse_v[2];  // 1 / row sum (0 for an empty row), and the row's log-sum-exp
    const int col0 = wg * NH + (lane & 3) * 2;
    auto row_of = [&](int s, int e) { return (static_cast<int64_t>(p.num_splits[req] + s) * p.h_kv + h) * p.rows + qrow[e]; };
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float lt = s_sum[tr[e]] + s_sum[64 + tr[e]];
      const bool empty = !(lt > 0.f);
      inv[e] = empty ? 0.f : 1.f / lt;
      lse_v[e] = empty ? (n_split == 1 ? INFINITY : -INFINITY) : (m_run[e] + __log2f(lt)) * 0.69314718055994531f;
      if (n_split == 1 || qrow[e] >= p.rows) continue;
      const int64_t row_id = row_of(split, e);
      float* dst = p.o_acc + row_id * DV + col0;
#pragma unroll
      for (int t = 0; t < NH / 8; ++t)
        *reinterpret_cast<float2*>(dst + t * 8) = make_float2(o[4 * t + 2 * e] * inv[e], o[4 * t + 2 * e + 1] * inv[e]);
      if (wg == 0 && (lane & 3) == 0) p.lse_acc[row_id] = lse_v[e];
    }
    bool finish = n_split == 1;  // this CTA writes the request's output rows
    if (!finish) {
      __threadfence();
      __syncthreads();
      int* last_flag = reinterpret_cast<int*>(s_m);
      if (tid == 0) {
        int* count = g_pieces_done + (static_cast<int64_t>(req) * p.h_kv + h) * gridDim.x + mt;
        const bool last = atomicAdd(count, 1) == n_split - 1;
        if (last) *count = 0;
        *last_flag = last;
      }
      __syncthreads();
      finish = *last_flag;
      if (finish) {
        __threadfence();
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          if (qrow[e] >= p.rows) continue;
          float mx = lse_v[e];
          for (int s = 0; s < n_split; ++s)
            if (s != split) mx = fmaxf(mx, __ldcg(p.lse_acc + row_of(s, e)));
          if (mx == -INFINITY) {  // no keys in any piece: O is 0, as the combine kernel writes it
            lse_v[e] = INFINITY;
            continue;
          }
          float sum = __expf(lse_v[e] - mx);
          for (int s = 0; s < n_split; ++s)
            if (s != split) sum += __expf(__ldcg(p.lse_acc + row_of(s, e)) - mx);
          const float lse = mx + __logf(sum);
          inv[e] *= __expf(lse_v[e] - lse);
#pragma unroll
          for (int t = 0; t < NH / 8; ++t) {
            o[4 * t + 2 * e] *= inv[e];
            o[4 * t + 2 * e + 1] *= inv[e];
          }
          inv[e] = 1.f;
          lse_v[e] = lse;
          for (int s = 0; s < n_split; ++s) {
            if (s == split) continue;
            const int64_t row_id = row_of(s, e);
            const float w = __expf(__ldcg(p.lse_acc + row_id) - lse);
            const float* src = p.o_acc + row_id * DV + col0;
#pragma unroll
            for (int t0 = 0; t0 < NH / 8; t0 += @CHUNK@) {  // @CHUNK@ loads in flight, then their sums
              float2 v[@CHUNK@];
#pragma unroll
              for (int t = 0; t < @CHUNK@; ++t) v[t] = __ldcg(reinterpret_cast<const float2*>(src + (t0 + t) * 8));
#pragma unroll
              for (int t = 0; t < @CHUNK@; ++t) {
                o[4 * (t0 + t) + 2 * e] += w * v[t].x;
                o[4 * (t0 + t) + 2 * e + 1] += w * v[t].y;
              }
            }
          }
        }
      }
    }
    if (finish) {
#pragma unroll
      for (int e = 0; e < 2; ++e)
        if (qrow[e] < p.rows && wg == 0 && (lane & 3) == 0)
          p.lse[(static_cast<int64_t>(req) * p.h_q + h * p.g + qrow[e] % p.g) * p.s_q + qrow[e] / p.g] = lse_v[e];
"""
COUNTERS = "__device__ int g_pieces_done[1 << 18];  // per (request, kv head, row tile): pieces counted in; the last resets it\n"
for name, chunk in (("combine_here", "NH / 8"), ("combine_here8", "8")):
    VARIANTS[name] = [(WG, WG_EPILOGUE, COMBINE_HERE.replace("@CHUNK@", chunk)), (WG, HELPERS_AT, COUNTERS + HELPERS_AT),
                      VARIANTS["no_combine"][0]]
# The combine grid starts on each request as soon as its pieces are written, not once the whole decode grid is done
# (candidate; counters in zero-initialized device arrays that the combine resets, enough for the measured cases):
# each piece's CTA, after its partial rows are written, adds their number to its (request, kv head) counter (barrier,
# then one thread's fence and atomic add); each combine warp waits (acquire load) until the counter holds every
# piece's rows instead of `griddepcontrol.wait`, and the last warp of a (request, kv head) to finish resets it.
# H200 (call 26-2): 0.994 after the flush, 0.964 back to back (combine_early_start: 0.994, 0.979).
EARLY_COUNTERS = """namespace mlabatch {

__device__ int g_rows_ready[1 << 16];   // per (request, kv head): partial rows written by its pieces
__device__ int g_rows_merged[1 << 16];  // per (request, kv head): rows the combine has written
__device__ __forceinline__ void count_rows_ready(const MlaParams& p, int req, int h, int rows) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(g_rows_ready + req * p.h_kv + h, rows);
  }
}
"""
EARLY_WAIT = """  asm volatile("griddepcontrol.wait;\\n" ::: "memory");
  const int h = gr / p.rows, qrow = gr % p.rows;
"""
EARLY_SPIN = """  const int h = gr / p.rows, qrow = gr % p.rows;
  int* ready = g_rows_ready + req * p.h_kv + h;
  if (lane == 0) {
    int v;
    do {
      asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\\n" : "=r"(v) : "l"(ready) : "memory");
    } while (v < n * p.rows && (__nanosleep(64), true));
  }
  __syncwarp();
"""
EARLY_RESET = """  if (lane == 0) p.lse[(static_cast<int64_t>(req) * p.h_q + hq) * p.s_q + i] = lse;
}
"""
VARIANTS["combine_early"] = VARIANTS["combine_prev"] + [
    (COMBINE, "namespace mlabatch {\n", EARLY_COUNTERS),
    (COMBINE, EARLY_WAIT, EARLY_SPIN),
    (COMBINE, "for (int s = lane; s < n; s += 32) mx = fmaxf(mx, p.lse_acc[row_id(s)]);",
     "for (int s = lane; s < n; s += 32) mx = fmaxf(mx, __ldcg(p.lse_acc + row_id(s)));"),
    (COMBINE, "for (int s = lane; s < n; s += 32) sum += __expf(p.lse_acc[row_id(s)] - mx);",
     "for (int s = lane; s < n; s += 32) sum += __expf(__ldcg(p.lse_acc + row_id(s)) - mx);"),
    (COMBINE, "const float w = __expf(p.lse_acc[row_id(s)] - lse);", "const float w = __expf(__ldcg(p.lse_acc + row_id(s)) - lse);"),
    (COMBINE, "const float4 v = *reinterpret_cast<const float4*>(src + c);", "const float4 v = __ldcg(reinterpret_cast<const float4*>(src + c));"),
    (COMBINE, EARLY_RESET, """  if (lane == 0) {
    p.lse[(static_cast<int64_t>(req) * p.h_q + hq) * p.s_q + i] = lse;
    if (atomicAdd(g_rows_merged + req * p.h_kv + h, 1) == p.rows - 1) {  // every row of this request and head merged
      g_rows_merged[req * p.h_kv + h] = 0;
      *ready = 0;
    }
  }
}
"""),
    (COMBINE, "    __syncthreads();  // P and the reductions are reused by the next request of this part\n",
     "    if (n_split > 1) count_rows_ready(p, req, h, min(M, p.rows - mt * M));\n"
     "    __syncthreads();  // P and the reductions are reused by the next request of this part\n"),
    (WG, "    if (n_split == 1) {\n      // O in T through shared memory",
     "    if (n_split > 1) count_rows_ready(p, req, h, min(64, p.rows - mt * 64));\n"
     "    if (n_split == 1) {\n      // O in T through shared memory"),
]
# The same with the wgmma kernel's trigger at its start (as the mma.sync kernel's), so combine warps can start on
# requests whose pieces are written on multiprocessors that decode CTAs leave early.
VARIANTS["combine_early_start"] = VARIANTS["combine_early"] + [
    (WG, '    if (req == end_req) asm volatile("griddepcontrol.launch_dependents;\\n" ::: "memory");\n', ""),
    (WG, "  if (begin_req <= end_req) load_q(begin_req);",
     '  asm volatile("griddepcontrol.launch_dependents;\\n" ::: "memory");\n  if (begin_req <= end_req) load_q(begin_req);'),
]
# A split piece's fp32 partial written as FlashMLA writes its O accumulator: each warpgroup's half staged in its page
# buffer (rows padded by 32 bytes where they fit, so a warp's float2 stores hit distinct banks), then one bulk copy per
# valid row, as whole requests write O; before, every thread stored its 64 float2 to global memory. H200 (call 26-4):
# 0.9983 after the flush, 0.9889 back to back.
ACC_STAGE = """        const uint32_t st = k_addr(wg) + tr[e] * kAccRow + (lane & 3) * 8;
#pragma unroll
        for (int t = 0; t < NH / 8; ++t)
          asm volatile("st.shared.v2.f32 [%0], {%1, %2};\\n" ::"r"(st + t * 32), "f"(o[4 * t + 2 * e] * inv[e]),
                       "f"(o[4 * t + 2 * e + 1] * inv[e]) : "memory");
"""
VARIANTS["acc_bulk"] = [
    (WG, "    float inv[2];  // 1 / row sum, 0 for an empty row\n",
     "    // Row bytes of the fp32 partial staged in a page buffer: padded by 32 bytes where that fits.\n"
     "    constexpr uint32_t kAccRow = 64 * (NH * 4 + 32) <= TL::kTileBytes ? NH * 4 + 32 : NH * 4;\n"
     "    float inv[2];  // 1 / row sum, 0 for an empty row\n"),
    (WG, PARTIAL_STORE, ACC_STAGE),
    (WG, "    if (n_split == 1) {\n      // O in T through shared memory",
     """    if (n_split > 1) {
      fence_proxy_async();
      bar_own(wg);
      const int qr = mt * 64 + wt;
      if (wt < 64 && qr < p.rows) {
        const int64_t row_id = (static_cast<int64_t>(slot) * p.h_kv + h) * p.rows + qr;
        bulk_store(p.o_acc + row_id * DV + wg * NH, k_addr(wg) + wt * kAccRow, NH * 4);
        bulk_commit();
        bulk_wait_read();
      }
    }
    if (n_split == 1) {
      // O in T through shared memory"""),
]
# The GPU scheduler with the smallest payload from ceil(total / parts) up whose packing places every request, instead
# of FlashMLA's ceil(total / parts) + kFixedOverhead: a part stops short of its payload by up to kFixedOverhead where
# the rest does not fit, so with FlashMLA's the first parts fill up and the last ones run short or empty (H200 cases:
# 6 of 132 parts empty at 64 x h_q=16 x ~2082 varlen and 256 x h_q=32 x ~711 varlen). H200 (call 26-5): 64 x h_q=16
# 1.030 after the flush, 0.996 back to back; ~711 varlen 0.999-1.010; no other measured case changes its schedule.
TIGHT_PAYLOAD = """  long long payload = (total + parts - 1) / parts;
  for (; payload < (total + parts - 1) / parts + kFixedOverhead; ++payload) {  // the first payload that places all
    int r = 0, bk = 0;
    for (int q = 0; q < parts && r < b; ++q) {
      long long room = payload;
      while (r < b) {
        const int rest = pages[r] - bk;
        if (room < rest + kFixedOverhead) {
          if (room > kFixedOverhead) bk += static_cast<int>(room - kFixedOverhead);
          break;
        }
        room -= rest + kFixedOverhead;
        ++r;
        bk = 0;
      }
    }
    if (r == b) break;
  }
"""
VARIANTS["tight_payload"] = [("csrc/mla_metadata.cu", "  const long long payload = (total + parts - 1) / parts + kFixedOverhead;\n", TIGHT_PAYLOAD)]
# Where two or more row tiles read each page (the compute-bound cases), the pages `ahead` pairs past this one asked of
# L2 by warpgroup 1's 128 threads while it waits for warpgroup 0's max (`prefetch.global.L2`, one per `step` bytes, the
# lines split between the row tiles), so their copies come from L2: the fourteenth session's "pages from L2" ablation
# gave both kernels 8%. The TMA prefetches tried there before (fourteenth, seventeenth, eighteenth sessions) lost
# 4-8%; one reading was that their line requests queue on the SM's TMA unit in front of the copies, which these do
# not use. `bulk_pf1`: the same pages by one bulk TMA prefetch each (row tile 0, one thread), to test that reading.
WG1_MAX_WAIT = "        if constexpr (B) mask_rowmax(blk_b, mx, LAST || p.causal);\n        bar_wait(kScale0);"


def pair_prefetch(ahead: int, step: int = 128, bulk: bool = False, hint: str = "") -> list[tuple[str, str, str]]:
    """Edits: warpgroup 1 asks L2 for the pages `ahead` pairs on, in parts with two or more row tiles (`hint`: an
    eviction priority for the LSU prefetches, e.g. "::evict_last")."""
    pages = f"""
      int pf_page[2] = {{-1, -1}};  // the pages {ahead} pair(s) on, asked of L2 by warpgroup 1 where two row tiles read them
      if constexpr (W == 1) {{
        if (gridDim.x > 1) {{
#pragma unroll
          for (int j = 0; j < 2; ++j)
            if (blk_a + 2 * {ahead} + j < last) pf_page[j] = bt[blk_a + 2 * {ahead} + j];
        }}
      }}"""
    if bulk:
        ask = """        if (mt == 0 && wt == 0 && p.k_rs == DQK) {
#pragma unroll
          for (int j = 0; j < 2; ++j)
            if (pf_page[j] >= 0) l2_prefetch(static_cast<const T*>(p.k) + static_cast<int64_t>(pf_page[j]) * p.k_bs + h * p.k_hs, TL::kTileBytes);
        }
"""
    else:
        ask = f"""        if (gridDim.x > 1) {{
          constexpr int kPieces = DQK * sizeof(T) / {step};  // pieces of one token's row
#pragma unroll
          for (int j = 0; j < 2; ++j) {{
            if (pf_page[j] < 0) continue;
            const T* pg = static_cast<const T*>(p.k) + static_cast<int64_t>(pf_page[j]) * p.k_bs + h * p.k_hs;
            for (int i = wt * gridDim.x + mt; i < kPage * kPieces; i += 128 * gridDim.x) {{
              const T* line = pg + (i / kPieces) * p.k_rs + (i % kPieces) * ({step} / sizeof(T));
              asm volatile("prefetch.global.L2{hint} [%0];\\n" ::"l"(line));
            }}
          }}
        }}
"""
    edits = [(WG, NEXT_PAGES, NEXT_PAGES + pages),
             (WG, WG1_MAX_WAIT, WG1_MAX_WAIT.replace("        bar_wait(kScale0);", ask + "        bar_wait(kScale0);"))]
    return ([WITH_L2_PREFETCH] if bulk else []) + edits


VARIANTS["lsu_pf1"] = pair_prefetch(1)
VARIANTS["lsu_pf2"] = pair_prefetch(2)
VARIANTS["lsu_pf1_32"] = pair_prefetch(1, step=32)
VARIANTS["bulk_pf1"] = pair_prefetch(1, bulk=True)
# The same with the prefetched lines kept in L2 until used (evict_last), in case the copies' evict-first lines push them out.
VARIANTS["lsu_pf1_el"] = pair_prefetch(1, hint="::evict_last")
# Ablations (wrong outputs): where two row tiles read each page, each tile copies only the slabs of its parity (the
# others' barriers complete without a copy), so the SMs read half as much from L2 and DRAM reads stay: the most a 2-CTA
# multicast of the page copies could give, without its agreement between the CTAs (the eleventh session's ablation,
# on the kernel of then). `refill_hot` above keeps every copy but reads no DRAM after the first pages.
VARIANTS["half_copies"] = [(WG, "        if (page >= 0) {\n          mbar_expect(bar_of(w, sl), SB);",
                            "        if (page >= 0 && (gridDim.x == 1 || (sl & 1) == (mt & 1))) {\n          mbar_expect(bar_of(w, sl), SB);")]
# The two row tiles of a part as a 2-CTA cluster that shares each page copy (TMA multicast into both CTAs), where
# a part has an even number of tiles. The seventeenth session's version made every refill wait until both CTAs had
# freed the buffer (about 470 cycles a pair, 6-9% slower). Here nobody waits: each CTA arms its own barriers, then
# counts the refill in CTA 0's shared memory (an atomic add through the cluster); the CTA that frees the buffer
# first goes on, the one that frees it second copies the page into both. `half_copies`' 1.6-2.7% is its ceiling.
CLUSTER_HELPERS = r"""// The number of CTAs in this CTA's cluster (1 when launched without clusters).
__device__ __forceinline__ uint32_t cluster_ctas() {
  uint32_t n;
  asm volatile("mov.u32 %0, %%cluster_nctarank;\n" : "=r"(n));
  return n;
}
__device__ __forceinline__ void cluster_sync_all() {
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
// Adds 1 to the counter at this CTA's shared address `addr`, in CTA 0 of the cluster, and returns its old value.
__device__ __forceinline__ uint32_t cluster_count0(uint32_t addr) {
  uint32_t remote, old;
  asm volatile("mapa.shared::cluster.u32 %0, %1, 0;\n" : "=r"(remote) : "r"(addr));
  asm volatile("atom.shared::cluster.add.u32 %0, [%1], 1;\n" : "=r"(old) : "r"(remote) : "memory");
  return old;
}
// tma_slab into the same place of both CTAs of the cluster, completing each one's own barrier.
__device__ __forceinline__ void tma_slab_both(uint32_t dst, const CUtensorMap* map, uint32_t bar, int col, int head, int page) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster.L2::cache_hint [%0], [%1, {%3, %4, %5, %6}], [%2], %7, %8;\n"
      ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(col), "r"(0), "r"(head), "r"(page), "h"(static_cast<uint16_t>(3)),
      "l"(kL2EvictFirst) : "memory");
}
"""
MC_CLUSTERS = [  # the clusters: launch, counters, cluster barriers
    (WG, HELPERS_AT, CLUSTER_HELPERS + HELPERS_AT),
    (WG, "+ bufs * kSlabs * 8; }", "+ bufs * kSlabs * 8 + bufs * 8; }"),
    (WG, """    asm volatile("fence.mbarrier_init.release.cluster;\\n" ::: "memory");
  }
  __syncthreads();
""", """    for (int i = 0; i < 2 * TL::kBufs; ++i) *reinterpret_cast<uint32_t*>(smem + (counters - base) + 4 * i) = 0;
    asm volatile("fence.mbarrier_init.release.cluster;\\n" ::: "memory");
  }
  __syncthreads();
  if (pair_ctas) cluster_sync_all();  // the other CTA's barriers and CTA 0's counters are ready
"""),
    (WG, "  if (tid == 0) {\n    for (int i = 0; i < TL::kBufs * SL; ++i) mbar_init(bars + i * 8);",
     "  const uint32_t counters = bars + TL::kBufs * SL * 8;  // refills of each buffer half, counted in CTA 0 of a cluster\n"
     "  const bool pair_ctas = cluster_ctas() == 2;\n"
     "  if (tid == 0) {\n    for (int i = 0; i < TL::kBufs * SL; ++i) mbar_init(bars + i * 8);"),
    (WG, "    __syncthreads();  // the page buffers, P and the sums are reused by the next request of this part\n  }\n}\n",
     "    __syncthreads();  // the page buffers, P and the sums are reused by the next request of this part\n  }\n"
     "  if (pair_ctas) cluster_sync_all();  // the other CTA may still count in CTA 0's shared memory\n}\n"),
    (WG, "  kernel<<<grid, TL::kThreads, TL::kSmem, stream>>>(p);\n", """  if (grid.x % 2 == 0) {  // the two row tiles of a part as a cluster that shares each page copy
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(TL::kThreads);
    cfg.dynamicSmemBytes = TL::kSmem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 2;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    cudaLaunchKernelEx(&cfg, kernel, p);
  } else {
    kernel<<<grid, TL::kThreads, TL::kSmem, stream>>>(p);
  }
"""),
]
LOAD_TO_LOOP = """      if (wt != 0) return;
      for (int sl = lo; sl < hi; ++sl) {
        if (page >= 0) {
          mbar_expect(bar_of(w, sl), SB);
          tma_slab(k_addr(w) + sl * SB, &p.k_map, bar_of(w, sl), sl * 64, h, page);
        } else {
          mbar_arrive(bar_of(w, sl));
        }
      }
"""  # the kernel's copy loop in load_to
COUNTED_LOAD_TO = """      if (wt != 0) return;
      if (page < 0) {
        for (int sl = lo; sl < hi; ++sl) mbar_arrive(bar_of(w, sl));
        return;
      }
      for (int sl = lo; sl < hi; ++sl) mbar_expect(bar_of(w, sl), SB);
      if (pair_ctas) {
@FIRST@        for (int sl = lo; sl < hi; ++sl) @COPY@(k_addr(w) + sl * SB, &p.k_map, bar_of(w, sl), sl * 64, h, page);
      } else {
        for (int sl = lo; sl < hi; ++sl) tma_slab(k_addr(w) + sl * SB, &p.k_map, bar_of(w, sl), sl * 64, h, page);
      }
"""


def counted_load_to(first: str, copy: str) -> tuple[str, str, str]:
    """Edit: load_to in a cluster counts each refill; `first` (a line) decides when this CTA leaves the copy to the
    other one, `copy` is the copy function used otherwise."""
    return (WG, LOAD_TO_LOOP, COUNTED_LOAD_TO.replace("@FIRST@", first).replace("@COPY@", copy))


COUNT = "cluster_count0(counters + (2 * w + (lo != 0)) * 4)"
VARIANTS["mc_pair"] = MC_CLUSTERS + [counted_load_to(f"        if (({COUNT} & 1) == 0) return;  // the other CTA copies it for both\n",
                                                     "tma_slab_both")]
# `mc_pair`'s clusters and counting with every CTA copying its own pages (no multicast, no CTA waiting on the other's
# copies; the copying thread still waits for the count): what the count's round trip alone costs.
VARIANTS["mc_count_only"] = MC_CLUSTERS + [counted_load_to(f"        if ({COUNT} == 0xFFFFFFFFu) return;  // never: waits for the count\n",
                                                           "tma_slab")]
# And the clusters alone (launch, counters' init, cluster barriers), every copy as in the tree's kernel.
VARIANTS["mc_launch_only"] = MC_CLUSTERS

# Before/after for the mma.sync kernel's page copies by TMA (session 30): each thread cp.async-copies 16-byte chunks
# of every page (rows past the sequence's end zero-filled), and the ring's stages are cp.async commit groups.
CP_ASYNC_PAGE = """// cp_async16 of a cache page's chunk, with that policy.
__device__ __forceinline__ void cp_async16_page(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2, %3;\\n" ::"r"(dst), "l"(src), "r"(src_bytes),
               "l"(kL2EvictFirst));
}
"""
VARIANTS["cp_async_pages"] = [
    (COMBINE, "// Orders this thread's generic-proxy", CP_ASYNC_PAGE + "// Orders this thread's generic-proxy"),
    (COMBINE, "  const T* qg = static_cast<const T*>(p.q);\n  // This thread's two rows",
     "  const T* qg = static_cast<const T*>(p.q);\n  const T* kg = static_cast<const T*>(p.k);\n  // This thread's two rows"),
    (COMBINE, """  const int lch = tid & 7, lrow = tid >> 3;
""", """  const int lch = tid & 7, lrow = tid >> 3;
  constexpr int kLoadPasses = kPage / (NT / 8);
  int ld_row[kLoadPasses];
  uint32_t ld_dst[kLoadPasses];
#pragma unroll
  for (int pass = 0; pass < kLoadPasses; ++pass) {
    const int row = lrow + pass * (NT / 8);
    ld_row[pass] = row * p.k_rs;
    ld_dst[pass] = 2 * slab_off(row, lch, kPage);
  }
"""),
    (COMBINE, """    auto load_page = [&](int stage, int page) {
      if (tid != 0) return;
      const uint32_t bar = bars + stage * 8;
      mbar_expect(bar, TL::kBlockBytes);
#pragma unroll
      for (int sl = 0; sl < CH / 8; ++sl) tma_slab(k_base + stage * TL::kBlockBytes + sl * kPage * 128, &p.k_map, bar, sl * 64, h, page);
    };
""", """    auto load_page = [&](int stage, int blk, int page) {
      const int valid = min(kPage, len - blk * kPage);
      const T* base = kg + static_cast<int64_t>(page) * p.k_bs + h * p.k_hs + lch * 8;
      const uint32_t dst = k_base + stage * TL::kBlockBytes;
#pragma unroll
      for (int pass = 0; pass < kLoadPasses; ++pass) {
        const bool ok = lrow + pass * (NT / 8) < valid;
        const T* src = base + (ok ? ld_row[pass] : 0);
#pragma unroll
        for (int sl = 0; sl < CH / 8; ++sl) cp_async16_page(dst + ld_dst[pass] + sl * kPage * 128, src + sl * 64, ok ? 16 : 0);
      }
    };
"""),
    (COMBINE, """#pragma unroll
    for (int s = 0; s < S - 1; ++s)
      if (s < n) load_page(s, tid == 0 ? bt[first + s] : 0);
""", """    if (n > 0) load_page(0, first, bt[first]);
    cp_async_commit();
#pragma unroll
    for (int s = 1; s < S - 1; ++s) {
      if (s < n) load_page(s, first + s, bt[first + s]);
      cp_async_commit();
    }
"""),
    (COMBINE, "    int next_page = tid == 0 && S - 1 < n ?", "    int next_page = S - 1 < n ?"),
    (COMBINE, """    cp_async_wait<0>();
    __syncthreads();
    if constexpr (kQRegs) {
""", """    if constexpr (kQRegs) {
      cp_async_wait<S - 1>();
      __syncthreads();
"""),
    (COMBINE, """      __syncthreads();  // every warp is past page it - 1, whose stage the copy below refills
      if (it + S - 1 < n) load_page((it + S - 1) % S, next_page);
      if (tid == 0 && it + S < n) next_page = bt[first + it + S];
      const int stage = it % S, blk = first + it;
      mbar_wait(bars + stage * 8, (phase >> stage) & 1);
      phase ^= 1u << stage;
      if (len - blk * kPage < kPage) zero_tail(stage, len - blk * kPage);
""", """      cp_async_wait<S - 2>();
      __syncthreads();
      if (it + S - 1 < n) load_page((it + S - 1) % S, first + it + S - 1, next_page);
      cp_async_commit();
      if (it + S < n) next_page = bt[first + it + S];
      const int stage = it % S, blk = first + it;
"""),
    (COMBINE, "    }\n\n    // Epilogue: total row sums", "    }\n    cp_async_wait<0>();\n\n    // Epilogue: total row sums"),
    (COMBINE, "    if (req < end_req) load_q(req + 1);  // every warp is past its last S, so the Q tile is free\n",
     "    if (req < end_req) {\n      cp_async_wait<0>();\n      load_q(req + 1);\n    }\n"),
]
# One barrier fewer per page in 16-row tiles (candidate, session 30): with the copies on mbarriers, the barrier at the
# top of each page only guards the refill of the previous page's stage. A 16-row tile's first row-max exchange is a
# barrier of the whole CTA, after which every warp is past that page too, so the refill goes there instead.
VARIANTS["refill_after_s"] = [
    (COMBINE, """      __syncthreads();  // every warp is past page it - 1, whose stage the copy below refills
      if (it + S - 1 < n) load_page((it + S - 1) % S, next_page);
      if (tid == 0 && it + S < n) next_page = bt[first + it + S];
""", """      auto refill = [&] {
        if (it + S - 1 < n) load_page((it + S - 1) % S, next_page);
        if (tid == 0 && it + S < n) next_page = bt[first + it + S];
      };
      if constexpr (R > 1) {
        __syncthreads();  // every warp is past page it - 1, whose stage the copy below refills
        refill();
      }
"""),
    (COMBINE, "      row_group_sync(wr);\n      float alpha[2], m_use[2];\n",
     "      row_group_sync(wr);\n      if constexpr (R == 1) refill();  // the whole CTA's barrier: every warp is past page it - 1\n"
     "      float alpha[2], m_use[2];\n"),
]
# Before/after for the mma.sync kernel's page copies with L2 evict_first (session 27): the cp.async copies without a policy.
# Call 27-2 (the variant was the change then): after the tool's flush, 320/256 h_q=9 x 1024 54.6 -> 53.4 us and
# 384/384 h_q=12 x 1024 63.6 -> 62.5 (best of 5), 1.8-2.3%; after a clean flush 0.2-0.4%; the other cases run the
# wgmma kernel. flush_ceiling.py: a plain read of h_q=9's bytes reaches 85% of copy after the tool's flush with
# the policy and 81% without.
DISPATCH = "csrc/mla_dispatch.cuh"
VARIANTS["page_evict_normal"] = VARIANTS["cp_async_pages"] + [
    (COMBINE, "++sl) cp_async16_page(dst + ld_dst[pass] + sl * kPage * 128,", "++sl) cp_async16(dst + ld_dst[pass] + sl * kPage * 128,"),
]
# Before/after for the mma.sync kernel's Q fragments in registers (session 29): every S reads its Q fragments from
# shared memory again, as before. Call 29-2 (best of 5 after the tool's flush; best of 3 after a clean one): 320/256
# h_q=9 x 1024 53.6 -> 52.8 us (46.1 -> 45.6 clean), 384/384 h_q=12 x 1024 62.8 -> 62.1 (54.8 -> 54.3); 576/512
# h_q=12 (wgmma, unchanged) 94.8 / 94.6.
VARIANTS["q_smem"] = [(COMBINE, "constexpr bool kQRegs = R <= 2;", "constexpr bool kQRegs = false;")]
# The mma.sync kernel's S in four accumulator chains (one per k step of a slab) instead of two: with Q in registers an
# S step is one ldmatrix and two mma, so the chains' mma latency may be what a page's S waits on. Call 29-3 (best of
# 5): 320/256 h_q=9 x 1024 52.8 / 52.8 us, 384/384 h_q=12 61.8 / 61.7, the same after a clean flush: not kept.
VARIANTS["s_chains4"] = [
    (COMBINE, "      float sc[2][4], sc2[2][4];\n", "      float sc[2][4], sc2[2][4], sc3[2][4], sc4[2][4];\n"),
    (COMBINE, "sc[t][e] = sc2[t][e] = 0.f;", "sc[t][e] = sc2[t][e] = sc3[t][e] = sc4[t][e] = 0.f;"),
    (COMBINE, "float(&acc)[2][4] = (u & 1) ? sc2 : sc;", "float(&acc)[2][4] = u == 0 ? sc : u == 1 ? sc2 : u == 2 ? sc3 : sc4;"),
    (COMBINE, "sc[t][e] += sc2[t][e];", "sc[t][e] += sc2[t][e] + sc3[t][e] + sc4[t][e];"),
]
# Tiles of 17-32 rows at narrow widths (320/256 h_q=32) as two 16-row mma.sync CTAs per SM (one per row tile, the
# same parts) instead of one 64-row wgmma tile with half its rows padding. Call 27-2: 320/256 h_q=32 x ~711 varlen
# 53.0 -> 61.9 us after the tool's flush, 52.5 -> 60.3 after a clean one: 13-14% slower.
VARIANTS["rows32_mma16"] = [
    (DISPATCH, "    if (p.rows <= kTwoCtaMaxRows) {\n      if (p.num_parts * p.h_kv > num_sms())",
     "    if (p.rows <= 2 * kTwoCtaMaxRows) {\n      if (p.rows > kTwoCtaMaxRows || p.num_parts * p.h_kv > num_sms())"),
]
# Tiles of 17-32 rows at d_qk <= 320 (320/256 h_q=32) as one 32-row mma.sync CTA per part, two CTAs per SM on a
# schedule of twice the parts (as 16-row tiles run), instead of one 64-row wgmma tile with half its rows padding
# on one CTA per SM. Call 28-3 (best of 3, the tool's flush; each build timed alone, as kernel_variants.py then took
# every variant's part count from the first one named): 320/256 h_q=32 x ~711 varlen 52.3 -> 62.0 us, x 2048
# 107.5 -> 107.9, s_q=2 h_q=16 x 1024 35.4 -> 47.1; after a clean flush 52.2 -> 60.9, 97.5 -> 107.1, 34.5 -> 46.1.
# Not kept: the 32-row mma.sync tile is slower than the padded wgmma tile.
VARIANTS["rows32_two_cta"] = [
    ("limits.py", "TWO_CTA_MAX_ROWS = 16", "TWO_CTA_MAX_ROWS = 32"),
    (DISPATCH, """  static_assert(kTwoCtaMaxRows == 16 && kQTileRows == 64, "16-row mma.sync tiles, then 64-row tiles");
  if constexpr (DQK <= kTwoCtaMaxDqk) {
    if (p.rows <= kTwoCtaMaxRows) {""", """  if constexpr (DQK <= 320) {
    if (p.rows > 16 && p.rows <= 32 && p.num_parts * p.h_kv > num_sms()) return launch_decode<T, DQK, DV, 2, 2>(p, stream);
  }
  if constexpr (DQK <= kTwoCtaMaxDqk) {
    if (p.rows <= 16) {"""),
]
FM_FILE = "sm90/decode/dense/splitkv_mla.cuh"
FM_VARIANTS: dict[str, list[tuple[str, str, str]]] = {  # the same ablations in FlashMLA's dense decode (every occurrence)
    "fm": [],
    "fm_hot": [(FM_FILE, "__ldg(block_table_ptr + (block_idx)))", "__ldg(block_table_ptr + 0))")],
    "fm_s_skip": [(FM_FILE, "    cute::gemm(tiled_mma, thr_mma_", "    if (false) cute::gemm(tiled_mma, thr_mma_")],
    "fm_pv_skip": [(FM_FILE, "    gemm<false, -1>(tiled_mma, ", "    if (false) gemm<false, -1>(tiled_mma, ")],
    "fm_stamps": stamps.fm_stamp_edits(FM_FILE),
}
# b, s_q, h_q, s_k, d_qk, d_v, varlen (h_kv = 1): the side-by-side tool's cases that these measurements use
CASES = [(128, 1, 16, 4096, 576, 512, False), (128, 1, 64, 4096, 576, 512, False), (128, 1, 128, 4096, 576, 512, False),
         (128, 2, 128, 4096, 576, 512, False), (128, 1, 128, 8192, 576, 512, False), (128, 1, 128, 4096, 576, 512, True),
         (256, 1, 32, 700, 576, 512, True), (512, 1, 16, 1500, 576, 512, True), (32, 1, 128, 32768, 576, 512, False),
         (256, 1, 9, 1024, 320, 256, False), (256, 1, 32, 700, 320, 256, True),
         (64, 1, 16, 2048, 576, 512, True),
         (256, 1, 32, 640, 576, 512, False),  # generate.py's Llama-3.2-1B decode (512 + 0-256 tokens)
         (256, 1, 12, 1024, 576, 512, False), (256, 1, 12, 1024, 384, 384, False),
         (256, 1, 32, 2048, 320, 256, False), (128, 2, 16, 1024, 320, 256, False)]  # 32-row tiles at a narrow width


def apply_edits(path: Path, edits: list[tuple[str, str]], what: str, every: bool = False) -> None:
    """edit_text on file `path`."""
    path.write_text(edit_text(path.read_text(), edits, what, every, str(path)))


def apply_variant(root: Path, edits: list[tuple[str, str, str]], what: str, every: bool = False) -> None:
    """Apply a variant's (file under root, old text, new text) edits, each file's in the variant's order."""
    by_file: dict[str, list[tuple[str, str]]] = {}
    for f, old, new in edits:
        by_file.setdefault(f, []).append((old, new))
    for f, file_edits in by_file.items():
        apply_edits(root / f, file_edits, what, every)


def make_ours(name: str, work: Path) -> Path:
    """Copy kernels/ into work/name/mlabatch with the variant's edits, module name and namespace; return its root."""
    pkg = work / name / "mlabatch"
    shutil.rmtree(work / name, ignore_errors=True)
    shutil.copytree(ROOT / "kernels", pkg / "kernels", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    (pkg / "__init__.py").touch()
    apply_edits(pkg / "kernels" / "build.py", [('JIT_NAME = "mlabatch_kernels_jit"', f'JIT_NAME = "{module_name(name)}"')], name)
    limits = pkg / "kernels" / "csrc" / "mla_limits.h"  # every source includes it before its namespace
    limits.write_text(f"#define mlabatch mlabatch_{name}\n" + limits.read_text())
    apply_variant(pkg / "kernels", VARIANTS[name], name)
    return work / name


def module_name(name: str) -> str:
    """The variant's extension module name (its PyInit symbol), distinct from every other build's."""
    return f"mlabatch_kernels_jit_{name}"


def make_fm(tag: str, flashmla: Path, work: Path) -> Path:
    """Copy FlashMLA's csrc into work/tag with the variant's edits; return the copy's root (the tool builds it)."""
    root = work / tag
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(flashmla / "csrc", root / "csrc")
    apply_variant(root / "csrc", FM_VARIANTS[tag], tag, every=True)
    return root


def tool_lens(b: int, s_q: int, h_q: int, s_k: int, varlen: bool) -> list[int]:
    """The lengths the side-by-side tool draws for one of its cases (its seed and distribution)."""
    import torch

    if not varlen:
        return [s_k] * b
    gen = torch.Generator().manual_seed(b + s_k + h_q)
    return torch.normal(float(s_k), s_k / 2, (b,), generator=gen).clamp(min=s_q).int().tolist()


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
        # The cache outlives make_ours' fresh copy, so a second run in one machine session reuses an unchanged build.
        env = dict(os.environ, PYTHONPATH=f"{root}:{os.environ.get('PYTHONPATH', '')}",
                   MLABATCH_KERNELS_CACHE=str(args.work / "_cache" / name), MAX_JOBS=str(args.jobs))
        code = "from mlabatch.kernels import build; m, why = build.load_extension(); print(why); print(m.__file__)"
        jobs[name] = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return jobs


def finish_builds(jobs: dict[str, subprocess.Popen], args: argparse.Namespace, emit: Log) -> dict[str, Path]:
    """Wait for the builds start_builds began; return each variant's .so (the last line its build printed)."""
    start = time.time()
    built = {}
    for name, job in jobs.items():
        log = job.communicate()[0]
        if job.returncode != 0:
            raise SystemExit(f"building {name} failed:\n{log[-3000:]}")
        built[name] = Path(log.strip().splitlines()[-1])
        emit(event="built", variant=name, seconds=round(time.time() - start, 1), how=log.strip().splitlines()[-2][:120])
    return built


def variant_scheduler(name: str, work: Path):
    """Variant `name`'s own kernels/scheduler.py (so its limits.py's part count), imported as a package of its own.

    Only scheduler.py and the limits.py it imports are loaded (not kernels/__init__), so the copies do not meet.
    """
    pkg = f"kv_sched_{name}"
    for key in [k for k in sys.modules if k == pkg or k.startswith(pkg + ".")]:  # an earlier copy of this variant
        del sys.modules[key]
    package = importlib.util.module_from_spec(importlib.util.spec_from_loader(pkg, loader=None, is_package=True))
    package.__path__ = [str(work / name / "mlabatch" / "kernels")]
    sys.modules[pkg] = package
    return importlib.import_module(f"{pkg}.scheduler")


def load_ours(name: str, so: Path):
    """Import variant `name`'s built extension from `so` under its own module name."""
    spec = importlib.util.spec_from_file_location(module_name(name), so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class CleanFlush:
    """The tool's flush buffer, read after it is zeroed: `zero_` leaves L2 full of clean lines instead of dirty ones."""

    def __init__(self, buf):
        self.buf = buf

    def zero_(self) -> None:
        self.buf.zero_()
        self.buf.view(-1, 4096).amax()  # a 512 MB read (the result is not used)


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
    regime = ap.add_mutually_exclusive_group()
    regime.add_argument("--clean-flush", action="store_true", help="zero the flush buffer, then read it (L2 left clean)")
    regime.add_argument("--sustained", type=float, default=0.0, help="time each variant by back-to-back replays for this many "
                        "seconds (no L2 flush: the power-limited steady state) instead of the tool's flushed median, with the SM clock")
    ap.add_argument("--timeline", action="store_true", help="per case, one stamped call of each stamped build (variant "
                    "stamps, FlashMLA fm_stamps) and its pair timeline")
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
    emit(event="device", name=torch.cuda.get_device_name(), variants=names, flashmla=fm, rounds=args.rounds,
         clean_flush=args.clean_flush, sustained=args.sustained)
    jobs = start_builds(names, args)
    fm_mod = None
    if fm:  # built here by the tool's own build (its flags), while ours compile
        tool.ARGS = argparse.Namespace(flashmla=str(make_fm(fm, args.flashmla_src, args.work)))
        fm_mod = tool.build_flashmla()
    exts = {n: load_ours(n, so) for n, so in finish_builds(jobs, args, emit).items()}
    schedulers = {n: variant_scheduler(n, args.work) for n in names}  # each variant's part count (its limits.py)

    flush = torch.empty(512 << 20, dtype=torch.uint8, device="cuda")
    if args.clean_flush:
        flush = CleanFlush(flush)
    smi: list[tuple[float, float, float, float]] = []
    smi_stop = threading.Event()
    if args.sustained:  # nvidia-smi samples the SM clock for each timing window
        clocks = _sibling("kernel_clocks")
        threading.Thread(target=clocks.sample_smi, args=(smi, smi_stop, 20), daemon=True).start()
    cases = [CASES[int(i)] for i in args.cases.split(",")] if args.cases else CASES
    logs: dict[str, list[float]] = {}
    for b, s_q, h_q, s_k, d, dv, varlen in cases:
        lens = tool_lens(b, s_q, h_q, s_k, varlen)
        q, kc, tb, ln = tool.make(b, s_q, h_q, 1, lens, d, poison=False)
        scale = d**-0.5
        sms = schedulers[names[0]].device_num_sms(q.device)
        sched = {n: e.mla_metadata(ln, schedulers[n].num_sm_parts(sms, s_q * h_q, 1, d)) for n, e in exts.items()}
        calls = {n: (lambda e, m: lambda: e.mla_decode(q, kc, tb, ln, dv, *m, scale, True))(e, sched[n]) for n, e in exts.items()}
        ref = calls[names[0]]()[0].float()
        diff = {n: float((c()[0].float() - ref).abs().max()) for n, c in calls.items()}
        fns = {n: tool.graphed(c) for n, c in calls.items()}
        if fm_mod is not None and (d, dv) == (576, 512):
            _, _, tsm, ns = fm_mod.dense_decode_fwd(q, kc, dv, ln, tb, scale, True, None, None)
            fns[fm] = tool.graphed(lambda: fm_mod.dense_decode_fwd(q, kc, dv, ln, tb, scale, True, tsm, ns))
        us: dict[str, list[float]] = {n: [] for n in fns}
        mhz: dict[str, list[int | None]] = {n: [] for n in fns}
        order = list(fns)
        for r in range(args.rounds):
            for n in order[r % len(order):] + order[: r % len(order)]:
                if args.sustained:
                    t, t0, t1 = clocks.replay_for(fns[n], args.sustained)
                    mhz[n].append(clocks.window_means(smi, t0, t1)["sm_mhz"])
                else:
                    t = tool.timed(fns[n], 30, flush)
                us[n].append(round(t, 1))
        best = {n: min(v) for n, v in us.items()}
        for n in best:
            logs.setdefault(n, []).append(math.log(best[names[0]] / best[n]))
        key = [b, s_q, h_q, round(sum(lens) / b), d, dv, varlen]
        emit(case=key, us=us, max_abs_diff_vs_first=diff,
             first_over_variant={n: round(best[names[0]] / best[n], 4) for n in best}, **({"sm_mhz": mhz} if args.sustained else {}))
        if args.timeline:
            stamped = [(n, calls[n], stamps.STAMP_ENV["ours"]) for n in calls if n.startswith("stamps")]
            if fm == "fm_stamps" and (d, dv) == (576, 512):
                stamped.append((fm, lambda: fm_mod.dense_decode_fwd(q, kc, dv, ln, tb, scale, True, tsm, ns), stamps.STAMP_ENV["flashmla"]))
            for n, call, env in stamped:
                buf = torch.zeros(4096 * stamps.ENTRIES_PER_CTA, dtype=torch.int64, device="cuda")  # up to 4096 CTAs
                os.environ[env] = str(buf.data_ptr())
                flush.zero_()
                call()
                torch.cuda.synchronize()
                del os.environ[env]
                emit(case=key, timeline=n, **stamps.timeline(buf))
        del q, kc, fns, calls
        torch.cuda.empty_cache()
    smi_stop.set()
    emit(geomean_first_over_variant={n: round(math.exp(sum(v) / len(v)), 4) for n, v in logs.items()},
         note="over the cases each variant ran; > 1 means the variant is faster than the first")


if __name__ == "__main__":
    main()
