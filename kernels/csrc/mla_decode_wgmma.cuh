// Decode kernel for 64-row query tiles with wgmma and TMA (sm_90a): every tile whose d_v halves start on
// 64-column slabs, except 16-row tiles of narrow heads (mla_dispatch.cuh), padded to 64 rows as FlashMLA
// does. Its schedule is FlashMLA's "seesaw" (docs/20250422-new-kernel-deep-dive.md there); the code is ours.
//
// One CTA = (scheduler part, kv head, 64 query rows), two warpgroups, page buffers K0 and K1 in shared
// memory (64-column slabs with the 128-byte swizzle wgmma reads; each slab a TMA copy with its own
// mbarrier). Where they fit (d_qk <= 320) there are two sets of K0/K1: pair p uses set p & 1 and its
// refills load pair p + 2, so a page lands a whole pair before its S (320/256 at h_q=32: 61 -> 56 us, H200).
// Pages go in pairs: warpgroup 0 scores page a (in K0), warpgroup 1 page b (in K1), each
// S = Q K^T over all 64 keys (m64n64). Warpgroup w owns output columns [w*DV/2, (w+1)*DV/2) in registers
// and multiplies both pages' P with its half of V: its own page's P from registers, the other page's
// through shared memory. The running max passes 0 -> 1 -> 0 through shared memory with the rescale
// factors (online softmax, exp2 domain).
//
// The two warpgroups take turns on the tensor cores: warpgroup 0's softmax runs under warpgroup 1's S,
// and each warpgroup issues the next pair's S while the other's P V runs. Each publishes its new row max
// before computing its P, so the other's softmax can start (ptxas moves arithmetic across named barriers:
// see `publish`). Whoever last reads a part of a
// page buffer issues its refill (warpgroup 0: the V0 half it owns, and K1's V half it owns; warpgroup 1
// the rest), and S waits on each slab's barrier just before its four wgmma, so S starts on the first
// slabs while the rest are in flight. The last Q slab lives in registers (wgmma with A from registers),
// which leaves room in shared memory for the two P tiles; it arrives through P tile 0 with the rest of Q, which
// each request copies under the previous request's epilogue.
// Epilogue: a request decoded whole writes O through shared memory with one bulk copy per row (FlashMLA
// uses a TMA store); pieces of a split request write fp32 partials for the combine kernel, as in mla_decode.cuh.
#pragma once

#include <type_traits>

#include "mla_decode.cuh"
#include "wgmma_ops.h"

namespace mlabatch {

template <int DQK, int DV>
struct WgTile {
  static constexpr int M = kQTileRows;
  static constexpr int kThreads = 256;
  static constexpr int kSlabs = DQK / 64;
  static constexpr int kSlabBytes = 64 * 128;  // 64 rows x 64 elements, 128-byte swizzled rows
  static constexpr int kTileBytes = kSlabs * kSlabBytes;  // one page
  static constexpr int kQBytes = (kSlabs - 1) * kSlabBytes;  // Q's last slab is in registers
  static constexpr int kNHalf = DV / 2;                       // output columns per warpgroup
  static constexpr int kVSlabs = kNHalf / 64;                 // slabs of each half of V
  static constexpr int kFloats = 6 * 64;                      // running max, rescale factors, row sums (2 x 64 each)
  static constexpr int smem_for(int bufs) { return 1024 + kQBytes + bufs * kTileBytes + 2 * kSlabBytes + kFloats * 4 + bufs * kSlabs * 8; }
  // Four page buffers (two sets of a pair) where they fit, so a pair's pages land a whole pair before their S.
  static constexpr int kBufs = smem_for(4) <= kSmemLimit ? 4 : 2;
  static constexpr int kSets = kBufs / 2;
  static constexpr int kSmem = smem_for(kBufs);
  static_assert(kNHalf % 64 == 0, "each warpgroup's V columns must start on a 64-column slab");
  static_assert(M == 64 && kPage == 64, "wgmma tiles are m64, and S covers one 64-token page");
  static_assert(kSmem <= kSmemLimit, "shared memory");
};

// How far (log2 units) a row's scores may pass its running max before the max moves: P <= 2^kMaxSlack = 256, which
// bf16 and fp16 hold with their usual relative rounding (see update_max).
constexpr float kMaxSlack = 8.f;

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a 128-byte-swizzled slab.
__device__ __forceinline__ uint32_t sw128(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }
// Four 8 x 8 16-bit matrices to shared memory, register i of each lane holding matrix i in the mma layout.
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r[0]), "r"(r[1]),
               "r"(r[2]), "r"(r[3]) : "memory");
}
// Bulk copy of `bytes` (a multiple of 16) from shared to global memory, as an async-proxy write (no tensor map);
// commit closes this thread's group, and wait_read returns once the group has read its shared memory.
__device__ __forceinline__ void bulk_store(void* dst, uint32_t src, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(src), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
// wgmma shared-memory descriptors with the 128-byte swizzle. Every operand here has the same high word
// (1024 bytes between 8-row groups, swizzle mode), so a descriptor is kept as its low word (start address,
// leading offset in bytes) and widened at the wgmma: advancing it is one 32-bit add, and the high word is a
// constant ptxas can hoist (64-bit adds cost two uniform instructions per wgmma).
constexpr uint32_t kDescHigh = (1024 >> 4) | (1u << 30);
__device__ __forceinline__ uint32_t gmma_desc_lo(uint32_t addr, uint32_t lbo) { return ((addr & 0x3FFFF) >> 4) | ((lbo >> 4) << 16); }
__device__ __forceinline__ uint64_t gmma_desc(uint32_t lo) { return (static_cast<uint64_t>(kDescHigh) << 32) | lo; }

// Named barriers between the warpgroups (0 is __syncthreads): the producer warpgroup arrives, the consumer
// syncs (256 threads). kOwn0 + w is warpgroup w's own (128 threads).
enum WgBarrier : int { kScale0 = 1, kScale1, kP0, kP1, kOwn0 };
__device__ __forceinline__ void bar_arrive(int id) { asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory"); }
__device__ __forceinline__ void bar_wait(int id) { asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory"); }
__device__ __forceinline__ void bar_own(int wg) { asm volatile("bar.sync %0, 128;\n" ::"r"(kOwn0 + wg) : "memory"); }

template <typename T, int DQK, int DV>
__global__ void __launch_bounds__(256, 1) mla_decode_wgmma_kernel(const __grid_constant__ MlaParams p) {
  using TL = WgTile<DQK, DV>;
  constexpr int NH = TL::kNHalf, SL = TL::kSlabs, VS = TL::kVSlabs, SB = TL::kSlabBytes;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023) & ~1023u;  // swizzle patterns repeat every 1024 bytes
  unsigned char* smem = smem_raw + (base - raw);
  // Layout: Q slabs [0, SL - 1) | K0 | K1 (| K0 | K1 of set 1) | P0 | P1 | floats | mbarriers.
  const uint32_t q_addr = base;
  auto k_addr = [&](int w) { return base + TL::kQBytes + w * TL::kTileBytes; };
  constexpr int NS = TL::kSets;
  auto p_addr = [&](int w) { return base + TL::kQBytes + TL::kBufs * TL::kTileBytes + w * SB; };
  float* s_m = reinterpret_cast<float*>(smem + TL::kQBytes + TL::kBufs * TL::kTileBytes + 2 * SB);  // [2][64] max
  float* s_scale = s_m + 2 * 64;                                                           // [2][64] factors
  float* s_sum = s_scale + 2 * 64;                                                         // [2][64] row sums
  const uint32_t bars = smem_u32(s_sum + 2 * 64);
  auto bar_of = [&](int w, int sl) { return bars + (w * SL + sl) * 8; };

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  // The warpgroup index through a shuffle, so the compiler knows it is warp-uniform and keeps the wgmma
  // descriptors built from it in uniform registers (as CUTLASS's canonical_warp_group_idx does).
  const int wg = __shfl_sync(0xffffffff, tid / 128, 0), wl = warp & 3, wt = tid & 127, ch = tid & 7;
  // Row tiles vary fastest in the grid, so a part's tiles, which read the same pages, run side by side.
  const int mt = blockIdx.x, h = blockIdx.y, part = blockIdx.z;
  const int* md = p.meta + part * kMetadataSize;
  const int begin_req = md[0], begin_blk = md[1], end_req = md[2], end_blk = md[3], begin_split = md[4];
  const T* qg = static_cast<const T*>(p.q);
  int tr[2], qrow[2];  // this thread's two rows of the m64 fragments, and their query rows
  tr[0] = wl * 16 + (lane >> 2);
  tr[1] = tr[0] + 8;
  qrow[0] = mt * 64 + tr[0];
  qrow[1] = mt * 64 + tr[1];
  // The row a lane addresses in a stmatrix .x4 of this warp's 16 fragment rows (P tiles and the O epilogue):
  // lane 8i + j gives row j of matrix i, rows +8 for odd i; matrices i >= 2 are the next 8 columns.
  const int stm_row = wl * 16 + ((lane >> 3) & 1) * 8 + (lane & 7);
  if (tid == 0) {
    for (int i = 0; i < TL::kBufs * SL; ++i) mbar_init(bars + i * 8);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  uint32_t phase = 0;  // bit `set`: parity of this warpgroup's slab barriers in that set, one completion per page

  // Q of request r: thread tid copies 16-byte chunk (tid & 7) of rows (tid >> 3) and (tid >> 3) + 32 of every
  // slab. The last slab goes to P tile 0 (free between requests), from where the request's prologue moves it
  // into registers. A request's Q is loaded under the previous request's epilogue, as FlashMLA does.
  auto load_q = [&](int r) {
#pragma unroll
    for (int r2 = 0; r2 < 2; ++r2) {
      const int row = (tid >> 3) + 32 * r2, qr = mt * 64 + row;
      const bool ok = qr < p.rows;
      const int i = ok ? qr / p.g : 0, j = ok ? qr % p.g : 0;
      const T* src = qg + r * p.q_bs + i * p.q_ss + (h * p.g + j) * p.q_hs + ch * 8;
      const uint32_t dst = q_addr + sw128(row, ch);
#pragma unroll
      for (int sl = 0; sl < SL - 1; ++sl) cp_async16(dst + sl * SB, src + sl * 64, ok ? 16 : 0);
      cp_async16(p_addr(0) + sw128(row, ch), src + (SL - 1) * 64, ok ? 16 : 0);
    }
    cp_async_commit();
  };
  if (begin_req <= end_req) load_q(begin_req);  // a part past the batch's end has no work (begin_req == b)

  for (int req = begin_req; req <= end_req; ++req) {
    const int first = req == begin_req ? begin_blk : 0;
    const int* bt = p.block_table + static_cast<int64_t>(req) * p.bt_stride;
    // The block-table entries of the prologue's pages (block first + w for buffer w) are read beside the length,
    // not after it, so a request's first copies wait for one load instead of two (an entry past the request's
    // pages, if the table has one, is read and not used). H200: 0.1-0.8% on the geometric mean after an L2 flush,
    // up to 2.5% on short varlen batches, none back to back (results md, twenty-first session).
    int first_page[NS];
#pragma unroll
    for (int set = 0; set < NS; ++set) {
      const int blk = first + 2 * set + wg;
      first_page[set] = blk < p.bt_cols ? bt[blk] : -1;
    }
    const int len = p.seqlens[req];
    const int nblk = (len + kPage - 1) / kPage;
    const int last = req == end_req ? end_blk : nblk;
    const int n = last - first;
    const int split = req == begin_req ? begin_split : 0;


    // Slabs [lo, hi) of cache page `page` into buffer w, one TMA copy per slab by one thread of the calling
    // warpgroup. Page -1 (the missing page b of a part's last pair) is not copied: its barriers complete at once.
    auto load_to = [&](int w, int page, int lo, int hi) {
      if (wt != 0) return;
      for (int sl = lo; sl < hi; ++sl) {
        if (page >= 0) {
          mbar_expect(bar_of(w, sl), SB);
          tma_slab(k_addr(w) + sl * SB, &p.k_map, bar_of(w, sl), sl * 64, h, page);
        } else {
          mbar_arrive(bar_of(w, sl));
        }
      }
    };
    uint32_t q_last[4][4];  // Q's last slab as wgmma A fragments, read from P tile 0 in the prologue below
    float s[32];  // this warpgroup's page scores (m64n64 accumulator), then its P
    const uint32_t dq = gmma_desc_lo(q_addr, 16), dk0 = gmma_desc_lo(k_addr(wg), 16);
    constexpr uint32_t kSetDesc = (2 * TL::kTileBytes) >> 4;  // descriptor step from one buffer set to the next
    // S += Q K^T over slab sl of this warpgroup's page, as soon as its copy has landed: one commit group.
    // `first_slab`: the page's first slab in issue order (its first k step overwrites S).
    auto score_slab = [&](int set, int sl, bool first_slab) {
      const uint32_t dk = dk0 + set * kSetDesc;
      mbar_wait(bar_of(2 * set + wg, sl), (phase >> set) & 1);
      wgmma_fence();
      fence_regs(s);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const uint32_t off = (sl * SB + kk * 32) >> 4;
        if (sl < SL - 1)
          Wgmma<T, 64, 0>::run(s, gmma_desc(dq + off), gmma_desc(dk + off), !(first_slab && kk == 0));
        else
          WgmmaRS<T, 64, 0>::run(s, q_last[kk], gmma_desc(dk + off), !(first_slab && kk == 0));
      }
      wgmma_commit();
      fence_regs(s);
    };
    // Warpgroup 1 scores its own V half and the RoPE slab first (it issued those copies itself), then
    // warpgroup 0's.
    auto score_page_wg1 = [&](int set) {
#pragma unroll
      for (int i = 0; i < SL; ++i) score_slab(set, (i + VS) % SL, i == 0);
      phase ^= 1u << set;
    };
    // Zero V rows [valid, kPage) of the V half `half` of buffer w (TMA copied whole pages; P is 0 there and
    // the cache may hold NaN), for this warpgroup's next wgmma. Only a part's last pair calls it: the pages
    // before hold whole pages (blk_b < last - 1 <= nblk - 1).
    auto zero_tail = [&](int w, int half, int blk) {
      const int valid = len - blk * kPage;
      if (valid >= kPage) return;
      for (int i = wt; i < (kPage - valid) * 8 * VS; i += 128) {
        const int row = valid + i / (8 * VS), rem = i % (8 * VS);
        *reinterpret_cast<uint4*>(smem + (k_addr(w) - base) + (half * VS + rem / 8) * SB + sw128(row, rem % 8)) =
            make_uint4(0, 0, 0, 0);
      }
      fence_proxy_async();
      bar_own(wg);
    };

    int lim[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      lim[e] = len;
      if (p.causal) lim[e] = max(0, min(len, len - p.s_q + qrow[e] / p.g + 1));
    }
    float o[NH / 2];
#pragma unroll
    for (int t = 0; t < NH / 2; ++t) o[t] = 0.f;
    float m_run[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    // Prologue: page first + w into buffer w (and, with two sets, first + 2 + w into buffer 2 + w), Q visible to
    // both warpgroups, Q's last slab into registers (k16 step kk: rows tr[0], tr[1]; columns c, c + 1 and c + 8,
    // c + 9, so 16-byte chunks 2kk and 2kk + 1), S of the first pair.
#pragma unroll
    for (int set = 0; set < NS; ++set) {
      const int blk = first + 2 * set + wg;
      if (2 * set < n) load_to(2 * set + wg, blk < last ? first_page[set] : -1, 0, SL);
    }
    cp_async_wait<0>();
    fence_proxy_async();
    __syncthreads();
    const unsigned char* q_last_tile = smem + (p_addr(0) - base);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r)
        q_last[kk][r] = *reinterpret_cast<const uint32_t*>(q_last_tile + sw128(tr[r & 1], 2 * kk + (r >> 1)) + (lane & 3) * 4);
    if (n > 0) {
      if (wg == 0) {
#pragma unroll
        for (int sl = 0; sl < SL; ++sl) score_slab(0, sl, sl == 0);
        phase ^= 1;
      } else {
        score_page_wg1(0);
      }
      wgmma_wait<0>();
      fence_regs(s);
    }

    const uint32_t dv0 = gmma_desc_lo(k_addr(0) + wg * VS * SB, SB);  // this warpgroup's V half of set 0's page a
    const uint32_t dv1 = gmma_desc_lo(k_addr(1) + wg * VS * SB, SB);  // and of its page b
    // O += P V over 64 keys of one buffer's V half: P from registers (this warpgroup's page) ...
    auto pv_local = [&](const uint32_t (&a)[4][4], uint32_t dv) {
      wgmma_fence();
      fence_regs(o);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) WgmmaRS<T, NH, 1>::run(o, a[kk], gmma_desc(dv + ((kk * 16 * 128) >> 4)), 1);
      wgmma_commit();
      fence_regs(o);
    };
    // ... or from the other warpgroup's P tile in shared memory.
    auto pv_remote = [&](int w, uint32_t dv) {
      const uint32_t dp = gmma_desc_lo(p_addr(w), 16);
      wgmma_fence();
      fence_regs(o);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) Wgmma<T, NH, 1>::run(o, gmma_desc(dp + ((kk * 32) >> 4)), gmma_desc(dv + ((kk * 16 * 128) >> 4)), 1);
      wgmma_commit();
      fence_regs(o);
    };
    // This warpgroup's P, packed as A fragments, into its P tile for the other warpgroup's wgmma: one
    // stmatrix per k16 step, whose four 8 x 8 matrices are exactly that step's fragment registers.
    const uint32_t p_row = p_addr(wg) + stm_row * 128;
    const uint32_t p_chunk = (lane >> 4) ^ (lane & 7);  // 16-byte chunk of k step 0, swizzled by row & 7
    auto store_p = [&](const uint32_t (&a)[4][4]) {
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) stmatrix_x4(p_row + ((p_chunk ^ (2 * kk)) << 4), a[kk]);
      fence_proxy_async();
    };
    // O and l times a factor per row; O is left alone when no row max of the warp moved (update_max: nearly always).
    auto scale_o = [&](const float (&f)[2]) {
      l[0] *= f[0];
      l[1] *= f[1];
      if (!__any_sync(0xffffffff, f[0] != 1.f || f[1] != 1.f)) return;
#pragma unroll
      for (int t = 0; t < NH / 8; ++t) {
        o[4 * t] *= f[0];
        o[4 * t + 1] *= f[0];
        o[4 * t + 2] *= f[1];
        o[4 * t + 3] *= f[1];
      }
    };
    // Row maxima of this warpgroup's page `blk` in the exp2 domain (scale_log2 > 0, so the max of the raw
    // scores is taken first). Keys past the sequence or the causal limit become -inf, checked only where
    // `may_mask` (the part's last pair, or causal rows) and a warp's page has such keys.
    auto mask_rowmax = [&](int blk, float (&mx)[2], bool may_mask) {
      const int end = blk * kPage + kPage;
      const bool whole = end <= lim[0] && end <= lim[1];
      if (may_mask && !__all_sync(0xffffffff, whole)) {
#pragma unroll
        for (int t = 0; t < 8; ++t)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = blk * kPage + t * 8 + (lane & 3) * 2 + (e & 1);
            if (key >= lim[e >> 1]) s[4 * t + e] = -INFINITY;
          }
      }
      mx[0] = mx[1] = -INFINITY;
#pragma unroll
      for (int t = 0; t < 32; ++t) mx[(t >> 1) & 1] = fmaxf(mx[(t >> 1) & 1], s[t]);
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        mx[e] = fmaxf(mx[e], __shfl_xor_sync(0xffffffff, mx[e], 1));
        mx[e] = fmaxf(mx[e], __shfl_xor_sync(0xffffffff, mx[e], 2));
        mx[e] *= p.scale_log2;
      }
    };
    // The new running max and the factor exp2(old - new), stored for the other warpgroup, which needs only these (it
    // goes on while this one computes P). The max moves only where a page's max passes it by more than kMaxSlack
    // (FlashAttention-4's conditional rescaling): P, l and O all use the same max, so the result changes only by
    // rounding, and after a row's first pages the factor is exactly 1, so scale_o leaves O alone. Moving it on every
    // new max made a warp rescale O on most pages (its 16 row maxima move at page k with odds of about 16 / k):
    // H200, 0.7% on the geometric mean after an L2 flush, 1.5% back to back, up to 2% on the h_q = 128 cases.
    auto update_max = [&](const float (&mx)[2], float (&factor)[2]) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float m_new = mx[e] > m_run[e] + kMaxSlack ? mx[e] : m_run[e];
        factor[e] = exp2f(m_run[e] - (m_new == -INFINITY ? 0.f : m_new));
        m_run[e] = m_new;
        if ((lane & 3) == 0) {
          s_m[wg * 64 + tr[e]] = m_new;
          s_scale[wg * 64 + tr[e]] = factor[e];
        }
      }
    };
    // Publishes the new max (update_max) to the other warpgroup, then gives back the max P is taken against,
    // read from shared memory: a load cannot move above the barrier, so neither can the exponentials that use
    // it (ptxas would otherwise compute them before the arrive and keep the other warpgroup waiting for them).
    auto publish = [&](int id, float (&m_use)[2]) {
      __syncwarp();
      bar_arrive(id);
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float m = s_m[wg * 64 + tr[e]];
        m_use[e] = m == -INFINITY ? 0.f : m;
      }
    };
    // P = exp2(S * scale_log2 - m_use) in place, and its row sums.
    auto softmax = [&](const float (&m_use)[2], float (&rowsum)[2]) {
      rowsum[0] = rowsum[1] = 0.f;
#pragma unroll
      for (int t = 0; t < 32; ++t) {
        s[t] = exp2f(fmaf(s[t], p.scale_log2, -m_use[(t >> 1) & 1]));
        rowsum[(t >> 1) & 1] += s[t];
      }
    };
    // P (rows times f[e]) in the A-fragment layout (FA3): k16 step kk takes n8 blocks 2kk and 2kk + 1.
    auto pack_p = [&](uint32_t (&a)[4][4], const float (&f)[2]) {
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) a[kk][r] = Pack<T>::two(s[8 * kk + 2 * r] * f[r & 1], s[8 * kk + 2 * r + 1] * f[r & 1]);
    };
    // One pair (page a = first + pa in K0, page b = a + 1 in K1 of buffer set `cur`), both scored on entry, as
    // warpgroup W runs it. LAST: no pair follows, so no S is issued. REFILL: the pair NS pairs ahead exists, so
    // the buffers this pair frees are refilled with it. B: page b exists; a part's last pair may have page a
    // alone, and then neither softmax nor P V runs for b (its S ran on an uncopied buffer and is unused).
    // Only the last pair has a short page to zero and, unless causal, keys to mask: the other pairs leave that
    // code out, as FlashMLA's templates do, and the steady pair loops are 18% shorter (911 / 1,056 SASS
    // instructions instead of 1,117 / 1,252 at 576/512): 1.3% faster on the H200 (2% at h_q=128).
    auto pair = [&](int pa, auto warpgroup, auto last_pair, auto has_b, auto refill) {
      constexpr int W = decltype(warpgroup)::value;
      constexpr bool LAST = decltype(last_pair)::value, B = decltype(has_b)::value, R = decltype(refill)::value;
      const int cur = NS == 2 ? (pa >> 1) & 1 : 0;  // this pair's buffer set
      const int blk_a = first + pa, blk_b = blk_a + 1, nxt = NS == 2 ? cur ^ 1 : cur;
      const uint32_t dv_half0 = dv0 + cur * kSetDesc, dv_half1 = dv1 + cur * kSetDesc;
      // The next pair's pages, read now so the block-table latency is not in front of their copies.
      const int next_a = R ? bt[blk_a + 2 * NS] : 0, next_b = R && blk_b + 2 * NS < last ? bt[blk_b + 2 * NS] : -1;
      uint32_t a[4][4];
      if constexpr (W == 0) {
        float mx[2], f0[2], m_use[2], rowsum[2];
        mask_rowmax(blk_a, mx, LAST || p.causal);
        update_max(mx, f0);
        publish(kScale0, m_use);
        softmax(m_use, rowsum);
        scale_o(f0);
        l[0] += rowsum[0];
        l[1] += rowsum[1];
        const float one[2] = {1.f, 1.f};
        pack_p(a, one);
        if constexpr (LAST) zero_tail(2 * cur, 0, blk_a);
        pv_local(a, dv_half0);
        wgmma_wait<0>();
        fence_regs(o);
        bar_wait(kScale1);  // warpgroup 1's max and the factor from page a's max to it
        float f1[2];
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          f1[e] = s_scale[64 + tr[e]];
          m_run[e] = s_m[64 + tr[e]];
        }
        if constexpr (R) load_to(2 * cur, next_a, 0, VS);  // K0's V half 0: only this warpgroup read it
        pack_p(a, f1);  // P of page a under page b's max, for warpgroup 1
        store_p(a);
        bar_arrive(kP0);
        if constexpr (B && LAST) zero_tail(2 * cur + 1, 0, blk_b);
        bar_wait(kP1);  // warpgroup 1 issued both its P V and stored P of page b
        scale_o(f1);
        if constexpr (B) pv_remote(1, dv_half1);
        if constexpr (!LAST) {
#pragma unroll
          for (int sl = 0; sl < VS; ++sl) score_slab(nxt, sl, sl == 0);
          wgmma_wait<VS>();  // P V of page b done: K1's V half 0 is free
          if constexpr (R) load_to(2 * cur + 1, next_b, 0, VS);
#pragma unroll
          for (int sl = VS; sl < SL; ++sl) score_slab(nxt, sl, false);
          phase ^= 1u << nxt;
        }
      } else {
        float f0[2], mx[2], f1[2], m_use[2], rowsum[2];
        // Page b's mask and row maxima need nothing from warpgroup 0 (ptxas keeps the masking ahead of the
        // barrier but sinks the max reduction below it: nothing orders arithmetic before a bar.sync).
        if constexpr (B) mask_rowmax(blk_b, mx, LAST || p.causal);
        bar_wait(kScale0);  // page a's max and the factor to it
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          f0[e] = s_scale[tr[e]];
          m_run[e] = s_m[tr[e]];
        }
        if constexpr (B) {
          update_max(mx, f1);
          publish(kScale1, m_use);
          softmax(m_use, rowsum);
        } else {  // no page b: the max stays page a's
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            f1[e] = 1.f;
            rowsum[e] = 0.f;
            if ((lane & 3) == 0) {
              s_m[64 + tr[e]] = m_run[e];
              s_scale[64 + tr[e]] = 1.f;
            }
          }
          bar_arrive(kScale1);
        }
        const float f[2] = {f0[0] * f1[0], f0[1] * f1[1]};  // O and l were last scaled to the max before page a
        scale_o(f);
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
        bar_wait(kP0);  // P of page a
        pv_remote(0, dv_half0);
        bar_arrive(kP1);
        if constexpr (!LAST) {
          if constexpr (R) {
            wgmma_wait<1>();  // P V of page b done: the rest of K1 is free
            load_to(2 * cur + 1, next_b, VS, SL);
            wgmma_wait<0>();  // P V of page a done: the rest of K0 is free
            load_to(2 * cur, next_a, VS, SL);
          }
          score_page_wg1(nxt);
        }
      }
      wgmma_wait<0>();
      fence_regs(s);
      fence_regs(o);
    };
    // Each warpgroup runs the pairs in its own loop, the steady-state pairs in a tight one (as FlashMLA does):
    // a pair starts right after the one before, with no dispatch between the pair kinds or the warpgroups.
    using F = std::false_type;
    using T1 = std::true_type;
    auto run_pairs = [&](auto warpgroup) {
      int pa = 0;
      for (; pa + 2 * NS < n; pa += 2) pair(pa, warpgroup, F{}, T1{}, T1{});
      if constexpr (NS == 2) {
        if (pa + 2 < n) {  // a pair follows, but none two ahead to refill for
          pair(pa, warpgroup, F{}, T1{}, F{});
          pa += 2;
        }
      }
      if (pa + 1 < n) {
        pair(pa, warpgroup, T1{}, T1{}, F{});
      } else if (pa < n) {
        pair(pa, warpgroup, T1{}, F{}, F{});
      }
    };
    if (wg == 0) {
      run_pairs(std::integral_constant<int, 0>{});
    } else {
      run_pairs(std::integral_constant<int, 1>{});
    }

    // The combine grid may launch once every CTA is at its last epilogue (as FlashMLA triggers it); triggering
    // at kernel start, as the mma.sync kernel does, was up to 2% slower on split batches (H200, b=64 h_q=16).
    if (req == end_req) asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      l[e] += __shfl_xor_sync(0xffffffff, l[e], 1);
      l[e] += __shfl_xor_sync(0xffffffff, l[e], 2);
      if ((lane & 3) == 0) s_sum[wg * 64 + tr[e]] = l[e];
    }
    __syncthreads();
    if (req < end_req) load_q(req + 1);  // every wgmma of this request is done: Q and P tile 0 are free
    const int n_split = p.num_splits[req + 1] - p.num_splits[req];
    const int slot = p.num_splits[req] + split;
    float inv[2];  // 1 / row sum, 0 for an empty row
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
        float* dst = p.o_acc + row_id * DV + col0;
#pragma unroll
        for (int t = 0; t < NH / 8; ++t)
          *reinterpret_cast<float2*>(dst + t * 8) = make_float2(o[4 * t + 2 * e] * inv[e], o[4 * t + 2 * e + 1] * inv[e]);
        if (wg == 0 && (lane & 3) == 0) p.lse_acc[row_id] = lse_v;
      }
    }
    if (n_split == 1) {
      // O in T through shared memory (this warpgroup's page buffer, free now), by stmatrix as in store_p but in
      // rows padded by 16 bytes (a matrix's 8 rows fall in different banks), then one bulk copy per valid row of
      // this warpgroup's columns: whole lines, and the CTA waits only until shared memory has been read.
      // Per-thread 4-byte stores of O had cost about 4 us per 64-row request (H200, b=1056 x 128 tokens, h_q=128).
      constexpr uint32_t kRowBytes = NH * sizeof(T) + 16;
      static_assert(64 * kRowBytes <= TL::kTileBytes, "O staging fits in one page buffer");
      const uint32_t stage = k_addr(wg);
      const uint32_t st_row = stage + stm_row * kRowBytes + (lane >> 4) * 16;
#pragma unroll
      for (int t = 0; t < NH / 8; t += 2) {
        const uint32_t r[4] = {Pack<T>::two(o[4 * t] * inv[0], o[4 * t + 1] * inv[0]),
                               Pack<T>::two(o[4 * t + 2] * inv[1], o[4 * t + 3] * inv[1]),
                               Pack<T>::two(o[4 * t + 4] * inv[0], o[4 * t + 5] * inv[0]),
                               Pack<T>::two(o[4 * t + 6] * inv[1], o[4 * t + 7] * inv[1])};
        stmatrix_x4(st_row + t * 16, r);
      }
      fence_proxy_async();
      bar_own(wg);
      const int qr = mt * 64 + wt;
      if (wt < 64 && qr < p.rows) {
        const int64_t row = (static_cast<int64_t>(req) * p.s_q + qr / p.g) * p.h_q + h * p.g + qr % p.g;
        T* dst = static_cast<T*>(p.out) + row * DV + wg * NH;
        bulk_store(dst, stage + wt * kRowBytes, NH * sizeof(T));
        bulk_commit();
        bulk_wait_read();
      }
    }
    __syncthreads();  // the page buffers, P and the sums are reused by the next request of this part
  }
}

template <typename T, int DQK, int DV>
void launch_decode_wgmma(const MlaParams& p, cudaStream_t stream) {
  using TL = WgTile<DQK, DV>;
  auto kernel = mla_decode_wgmma_kernel<T, DQK, DV>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, TL::kSmem);
  dim3 grid((p.rows + TL::M - 1) / TL::M, p.h_kv, p.num_parts);
  kernel<<<grid, TL::kThreads, TL::kSmem, stream>>>(p);
  launch_combine<T, DV>(p, stream);
}

}  // namespace mlabatch
