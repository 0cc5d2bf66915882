"""Per-pair clock64 timelines of our wgmma decode kernel and FlashMLA's (kernel_variants.py --timeline): the source
edits that make the stamped builds, and the medians read back from a stamp buffer."""

from __future__ import annotations

# Thread 0 of each warpgroup writes clock64() at fixed points of every steady-state page pair into a buffer whose
# address the host reads from an environment variable at each call (ours: MLA_STAMPS, FlashMLA: MLA_STAMPS_FM).
# Slot of a stamp: [CTA][warpgroup][first page >> 1, mod STAMP_SLOTS (a power of two)][point]; a later pair with the
# same slot overwrites all of its points. STAMP_POINTS names the points, the same places in both kernels
# except where the kernels differ (ours publishes a warpgroup's max before its exponentials, FlashMLA after).
STAMP_ENV = {"ours": "MLA_STAMPS", "flashmla": "MLA_STAMPS_FM"}
STAMP_SLOTS, STAMP_POINTS = 128, {
    0: ["top", "max published", "P V a issued", "P V a done", "wg1 max in", "K0 V half refill issued", "wg1 P V issued",
        "P V b issued", "P V b done", "K1 V half refill issued", "S issued", "S done"],
    1: ["top", "wg0 max in", "max published", "P stored", "P V b issued", "P of a in", "P V a issued",
        "K1 rest refill issued", "K0 rest refill issued", "S issued", "S done"],
}
_CLOCK = 'unsigned long long t_; asm volatile("mov.u64 %0, %%clock64;" : "=l"(t_) :: "memory");'
_POINTS = 16  # stamp entries per warpgroup and slot (STAMP_POINTS has at most 12)
_SLOT = (f"((((long long)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) * 2 + (W)) * ({_POINTS} * {STAMP_SLOTS})"
         f" + (((BLK) >> 1) & {STAMP_SLOTS - 1}) * {_POINTS} + (K)")
ENTRIES_PER_CTA = 2 * STAMP_SLOTS * _POINTS  # int64 entries a stamp buffer needs per CTA


def _insert(file: str, text: str, stamp: str, before: bool = False) -> tuple[str, str, str]:
    return (file, text, stamp + text if before else text + stamp)


def stamp_edits(wg_file: str) -> list[tuple[str, str, str]]:
    """Edits to our kernels/ (wg_file: the wgmma kernel's file): it stamps the points of STAMP_POINTS in every pair that
    refills (not a part's last pair)."""
    at = [(0, "        mask_rowmax(blk_a, mx, LAST || p.causal);\n", True), (1, "        publish(kScale0, m_use);\n", False),
          (2, "        pv_local(a, dv_half0);\n", False),
          (5, "        if constexpr (R) load_to(2 * cur, next_a, 0, VS);", False), (6, "        bar_wait(kP1);", False),
          (7, "        if constexpr (B) pv_remote(1, dv_half1);\n", False), (8, "          wgmma_wait<VS>();", False),
          (9, "          if constexpr (R) load_to(2 * cur + 1, next_b, 0, VS);\n", False), (10, "          phase ^= 1u << nxt;\n", False),
          (0, "        if constexpr (B) mask_rowmax(blk_b, mx, LAST || p.causal);\n", True), (1, "        bar_wait(kScale0);", False),
          (2, "          publish(kScale1, m_use);\n", False), (3, "          store_p(a);\n", False),
          (4, "        if constexpr (B) pv_local(a, dv_half1);\n", False), (5, "        bar_wait(kP0);", False),
          (6, "        bar_arrive(kP1);\n", False), (7, "            load_to(2 * cur + 1, next_b, VS, SL);\n", False),
          (8, "            load_to(2 * cur, next_a, VS, SL);\n", False), (9, "          score_page_wg1(nxt);\n", False)]
    edits = [_insert(wg_file, text, f" STAMP({k});\n", before) for k, text, before in at]
    edits.append((wg_file, "        bar_wait(kScale1);", " STAMP(3);\n        bar_wait(kScale1); STAMP(4);"))  # one on each side
    edits.append((wg_file, "      fence_regs(s);\n      fence_regs(o);\n    };", "      fence_regs(s);\n      fence_regs(o);\n      STAMP(W == 0 ? 11 : 10);\n    };"))
    edits.append((wg_file, "    auto pair = [&](int pa, auto warpgroup, auto last_pair, auto has_b, auto refill) {\n",
                  "#define STAMP(K) if constexpr (R && !LAST) if (p.stamps != nullptr && wt == 0) { const int BLK = blk_a; " + _CLOCK
                  + " p.stamps[" + _SLOT + "] = t_; }\n"
                  "    auto pair = [&](int pa, auto warpgroup, auto last_pair, auto has_b, auto refill) {\n"))
    edits.append(("csrc/mla_params.h", "  float scale_log2;          // softmax_scale * log2(e)\n",
                  "  float scale_log2;          // softmax_scale * log2(e)\n  unsigned long long* stamps;\n"))
    edits.append(("csrc/mla_api.cpp", "  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);\n",
                  "  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);\n"
                  f'  if (const char* s = getenv("{STAMP_ENV["ours"]}")) p.stamps = reinterpret_cast<unsigned long long*>(strtoull(s, nullptr, 0));\n'))
    return edits


def fm_stamp_edits(fm_file: str) -> list[tuple[str, str, str]]:
    """Edits to FlashMLA's csrc/ (fm_file: its dense decode): it stamps the same points in its steady-state pairs
    (not the last two)."""
    f = fm_file
    wg0 = [(0, "    wg0_bunch_0<T, IS_BLK0_LAST||IS_BLK1_LAST>(", True), (1, "    NamedBarrier::arrive(T::NUM_THREADS, NamedBarriers::sScale0Ready);\n", False),
           (2, "    warpgroup_cooperative_pv_gemm_localP<T>(rPb, sV0L, rO0, idx_in_warpgroup);\n", False),
           (3, "    // Wait for rO0, launch TMA for the next V0L\n    cute::warpgroup_wait<0>();\n", False),
           (4, "    NamedBarrier::arrive_and_wait(T::NUM_THREADS, NamedBarriers::sScale1Ready);\n", False),
           (5, "        launch_kv_tiles_copy_tma<0, 4>(tma_gK(_, _, nxt_block0_index), sK0, tma_params.tma_K, barriers_K0, idx_in_warpgroup);\n", False),
           (6, "        NamedBarrier::arrive_and_wait(T::NUM_THREADS, NamedBarriers::rO1sP0sV0RIssued);\n", False),
           (7, "        warpgroup_cooperative_pv_gemm_remoteP<T>(sP1, sV1L, rO0, idx_in_warpgroup);\n", False),
           (8, "        cute::warpgroup_wait<4>();\n", False),
           (9, "        launch_kv_tiles_copy_tma<0, 4>(tma_gK(_, _, nxt_block1_index), sK1, tma_params.tma_K, barriers_K1, idx_in_warpgroup);\n", False),
           (10, "        warpgroup_cooperative_qkt_gemm<T, 2>(sQ, sK0, rP0, rQ8, barriers_K0, cur_phase_K0, idx_in_warpgroup);\n", False),
           (11, "    // Wait for P0 = Q @ K0^T\n    cute::warpgroup_wait<0>();\n", False)]
    wg1 = [(2, "    NamedBarrier::arrive(T::NUM_THREADS, NamedBarriers::sScale1Ready);\n", False),
           (3, "        save_rPb_to_sP<T>(rP1b, sP1, idx_in_warpgroup);\n", False),
           (4, "        warpgroup_cooperative_pv_gemm_localP<T>(rP1b, sV1R, rO1, idx_in_warpgroup);\n", False),
           (5, "    NamedBarrier::arrive_and_wait(T::NUM_THREADS, NamedBarriers::sP0Ready);\n", False),
           (6, "        NamedBarrier::arrive(T::NUM_THREADS, NamedBarriers::rO1sP0sV0RIssued);\n", False),
           (7, "        launch_kv_tiles_copy_tma<4, 9>(tma_gK(_, _, nxt_block1_index), sK1, tma_params.tma_K, barriers_K1, idx_in_warpgroup);\n", False),
           (8, "        launch_kv_tiles_copy_tma<4, 9>(tma_gK(_, _, nxt_block0_index), sK0, tma_params.tma_K, barriers_K0, idx_in_warpgroup);\n", False),
           (9, "        warpgroup_cooperative_qkt_gemm<T, 1>(sQ, sK1, rP1, rQ8, barriers_K1, cur_phase_K1, idx_in_warpgroup);\n    }\n", False)]
    edits = [_insert(f, text, f"    STAMP0({k});\n", before) for k, text, before in wg0]
    edits += [_insert(f, text, f"    STAMP1({k});\n", before) for k, text, before in wg1]
    # warpgroup 1's first barrier gets a stamp on each side (points 0 and 1)
    edits.append((f, "    NamedBarrier::arrive_and_wait(T::NUM_THREADS, NamedBarriers::sScale0Ready);\n",
                  "    STAMP1(0);\n    NamedBarrier::arrive_and_wait(T::NUM_THREADS, NamedBarriers::sScale0Ready);\n    STAMP1(1);\n"))
    edits.append((f, "    cute::warpgroup_wait<0>();\n}\n\n// A helper function for determining the length of the causal mask",
                  "    cute::warpgroup_wait<0>();\n    STAMP1(10);\n}\n\n// A helper function for determining the length of the causal mask"))
    slot0, slot1 = _SLOT.replace("(W)", "0").replace("(BLK)", "block_idx"), _SLOT.replace("(W)", "1").replace("(BLK)", "block_idx")
    body = "if (params.stamps != nullptr && idx_in_warpgroup == 0) { " + _CLOCK + " params.stamps[{slot}] = t_; }"
    edits.append((f, "using cutlass::arch::NamedBarrier;\n", "using cutlass::arch::NamedBarrier;\n#include <cstdlib>\n"
                  "#define STAMP0(K) if constexpr (!IS_BLK0_LAST && !IS_BLK1_LAST) " + body.replace("{slot}", slot0) + "\n"
                  "#define STAMP1(K) if constexpr (!IS_BLK0_LAST && !IS_BLK1_LAST && !IS_BLK2_LAST) " + body.replace("{slot}", slot1) + "\n"))
    edits.append((f, "void run_flash_splitkv_mla_kernel(DenseAttnDecodeParams &params) {\n",
                  "void run_flash_splitkv_mla_kernel(DenseAttnDecodeParams &params) {\n"
                  f'    const char* stamps_env = getenv("{STAMP_ENV["flashmla"]}");\n'
                  '    params.stamps = stamps_env ? reinterpret_cast<unsigned long long*>(strtoull(stamps_env, nullptr, 0)) : nullptr;\n'))
    edits.append(("params.h", "    float *__restrict__ oaccum_ptr;\n", "    float *__restrict__ oaccum_ptr;\n    unsigned long long* stamps;\n"))
    return edits


def timeline(stamps, window: int = 20000) -> dict:
    """Medians over the steady pairs in a stamp buffer (see STAMP_POINTS): cycles from warpgroup 0's last S done of
    the pair before to each point of the pair, per warpgroup, and the pair's length. A slot counts where every point
    of both warpgroups is stamped and they belong to one pair (within `window` cycles)."""
    import torch

    n0, n1 = len(STAMP_POINTS[0]), len(STAMP_POINTS[1])
    st = stamps.view(-1, 2, STAMP_SLOTS, _POINTS).cpu()
    w0, w1 = st[:, 0, :, :n0], st[:, 1, :, :n1]
    ok = (w0 > 0).all(-1) & (w1 > 0).all(-1) & ((w1[..., 0] - w0[..., 0]).abs() < window)
    prev_done = torch.roll(w0[..., n0 - 1], 1, dims=1)  # slot s - 1's S done (slot 0 takes slot 127's: filtered below)
    gap = w0[..., 0] - prev_done
    use = ok & torch.roll(ok, 1, dims=1) & (gap > 0) & (gap < window)
    use[:, 0] = False
    if not bool(use.any()):
        return {"pairs": 0}
    med = lambda x: int(x.median())  # noqa: E731
    pair = (gap + w0[..., n0 - 1] - w0[..., 0])[use].double()
    return {"pairs": int(use.sum()), "pair_cycles": med(pair), "pair_cycles_mean": round(float(pair.mean())),
            "pair_cycles_p10_p90": [round(float(q)) for q in torch.quantile(pair, torch.tensor([0.1, 0.9], dtype=pair.dtype))],
            "wg0": {name: med((w0[..., k] - prev_done)[use]) for k, name in enumerate(STAMP_POINTS[0])},
            "wg1": {name: med((w1[..., k] - prev_done)[use]) for k, name in enumerate(STAMP_POINTS[1])}}
