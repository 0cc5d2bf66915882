// Split-KV MLA decode kernel for 16-row tiles of narrow heads (mma.sync + cp.async; 32- and 64-row tiles too
// for d_v 192) and the log-sum-exp combine kernel. Everything else runs mla_decode_wgmma.cuh (mla_dispatch.cuh).
//
// One CTA = (scheduler part, kv head, tile of M = 16*R query rows). The part's kPage-token pages stream
// through a multi-stage ring in shared memory (64-column slabs, XOR-swizzled rows), one TMA copy per slab and one
// mbarrier per stage. Warps form
// an R x 4 grid: warp (r, c) computes S for rows 16r.. and keys 16c.. of each page, the 4 warps of a
// row group exchange row maxima and bf16 probabilities through shared memory, and warp (r, c)
// accumulates output columns [c*DV/4, (c+1)*DV/4) for its rows in fp32 registers (online softmax,
// exp2 domain).
// A request decoded by one part writes out/lse directly; pieces of a split request write fp32 partials
// that mla_combine_kernel merges (launched as a programmatic dependent so its launch overlaps). Tiles of
// <= kTwoCtaMaxRows rows with d_qk <= kTwoCtaMaxDqk run two CTAs per SM when the schedule has twice as many
// parts as SMs (mla_limits.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

#include "mla_params.h"

namespace mlabatch {

constexpr int kColWarps = 4;
constexpr int kSmemLimit = 227 * 1024;
static_assert(kPage == 16 * kColWarps, "each column warp scores 16 keys of a page");

template <typename T>
struct Pack;
template <>
struct Pack<__nv_bfloat16> {
  static __device__ __forceinline__ uint32_t two(float a, float b) {
    __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};
template <>
struct Pack<__half> {
  static __device__ __forceinline__ uint32_t two(float a, float b) {
    __half2 v = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t*>(&v);
  }
};

template <typename T>
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// A shared-memory pointer as the 32-bit address the shared-memory instructions take.
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// ldmatrix from a shared-memory address (callers keep addresses as 32-bit offsets so immediates fold in).
__device__ __forceinline__ void ldsm_x4(uint32_t* r, uint32_t a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t* r, uint32_t a) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
}

// 16-byte async copy; src_bytes = 0 zero-fills the destination (rows past a sequence's end).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
// L2 policy for cache pages, which a CTA reads once: evict first (CUTLASS's EVICT_FIRST value, as FlashMLA's K copies).
// Lines already in L2 (after a decode step's other kernels, often dirty) are then evicted less, so less of their
// write-back shares DRAM with the page reads: H200, 320/256 and 384/384 at 1024 tokens 1.8-2.8% faster after the
// side-by-side tool's flush (dirty L2), unchanged after a clean one (results md, twenty-seventh session).
constexpr uint64_t kL2EvictFirst = 0x12F0000000000000ull;
// Orders this thread's generic-proxy shared-memory writes before later async-proxy (wgmma, TMA) accesses.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// mbarriers (one per page stage or slab) and the TMA copy of one 64 x 64 slab of a page (p.k_map's box, 128-byte
// swizzle: slab_off's layout).
__device__ __forceinline__ void mbar_init(uint32_t bar) { asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(bar)); }
__device__ __forceinline__ void mbar_expect(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) { asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory"); }
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t phase) {
  asm volatile(
      "{\n .reg .pred P1;\n LAB_WAIT:\n mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n @P1 bra DONE;\n bra LAB_WAIT;\n"
      " DONE:\n }\n" ::"r"(bar), "r"(phase) : "memory");
}
// Each page is read once per CTA: the copy asks L2 to evict it first (kL2EvictFirst).
__device__ __forceinline__ void tma_slab(uint32_t dst, const CUtensorMap* map, uint32_t bar, int col, int head, int page) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%3, %4, %5, %6}], [%2], %7;\n"
      ::"r"(dst), "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(col), "r"(0), "r"(head), "r"(page),
      "l"(kL2EvictFirst) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void row_group_sync(int r) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(r + 1), "r"(kColWarps * 32));
}

// Element offset of (row, 16-byte chunk) in a tile of `rows` rows stored as 64-column slabs (128-byte
// rows), chunks XOR-swizzled by row so that 8 consecutive rows at one chunk hit 8 different bank groups
// (ldmatrix without conflicts), and loaders index with shifts only.
__device__ __forceinline__ int slab_off(int row, int chunk, int rows) {
  return (chunk >> 3) * rows * 64 + row * 64 + (((chunk & 7) ^ (row & 7)) << 3);
}

// CTAS = CTAs resident per SM: 2 halves the shared-memory ring so that one CTA's request
// prologue/epilogue overlaps the other's streaming (used for narrow heads when the schedule has 2 parts/SM).
template <int DQK, int DV, int R, int CTAS>
struct Tile {
  static constexpr int kCtasPerSm = CTAS;
  static constexpr int M = 16 * R;
  static constexpr int kThreads = 32 * kColWarps * R;
  static constexpr int kChunks = DQK / 8;
  static constexpr int kBlockBytes = kPage * DQK * 2;
  static constexpr int kQBytes = M * DQK * 2;
  static constexpr int kPBytes = M * kPage * 2;
  static constexpr int kRedBytes = 2 * kColWarps * M * 4;
  // Besides the stages: 1024 bytes to align the swizzled slabs, Q, P, the reductions, one mbarrier per stage (<= 4).
  static constexpr int kFixed = 1024 + kQBytes + kPBytes + kRedBytes + 4 * 8;
  static constexpr int kFree = (kSmemLimit / kCtasPerSm - 1024 * (kCtasPerSm - 1)) - kFixed;
  static constexpr int kStages = kFree / kBlockBytes >= 4 ? 4 : kFree / kBlockBytes;
  static constexpr int kSmem = kFixed + kStages * kBlockBytes;
  static constexpr int kColsPerWarp = DV / kColWarps;
  static constexpr int kNTiles = kColsPerWarp / 8;
  static_assert(kStages >= 2, "shared memory too small for two pages");
  static_assert(DQK % 64 == 0 && DV % 64 == 0 && DV <= DQK, "head dims must be multiples of 64");
};

template <typename T, int DQK, int DV, int R, int CTAS>
__global__ void __launch_bounds__(Tile<DQK, DV, R, CTAS>::kThreads, Tile<DQK, DV, R, CTAS>::kCtasPerSm) mla_decode_kernel(const __grid_constant__ MlaParams p) {
  using TL = Tile<DQK, DV, R, CTAS>;
  constexpr int M = TL::M, NT = TL::kThreads, CH = TL::kChunks, S = TL::kStages;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  unsigned char* smem = smem_raw + (((raw + 1023) & ~1023u) - raw);  // the 128-byte swizzle repeats every 1024 bytes
  T* q_s = reinterpret_cast<T*>(smem);
  T* k_s = reinterpret_cast<T*>(smem + TL::kQBytes);
  T* p_s = reinterpret_cast<T*>(smem + TL::kQBytes + S * TL::kBlockBytes);
  float* red_max = reinterpret_cast<float*>(smem + TL::kQBytes + S * TL::kBlockBytes + TL::kPBytes);
  float* red_sum = red_max + kColWarps * M;

  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");  // let the combine grid launch early
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wr = warp / kColWarps, wc = warp % kColWarps;
  const int part = blockIdx.x, h = blockIdx.y, mt = blockIdx.z;
  const int* md = p.meta + part * kMetadataSize;
  const int begin_req = md[0], begin_blk = md[1], end_req = md[2], end_blk = md[3], begin_split = md[4];
  const T* qg = static_cast<const T*>(p.q);
  // This thread's two rows of the MMA fragments (tile rows tr[0], tr[0] + 8) and their query index.
  int tr[2], qrow[2];
  tr[0] = wr * 16 + (lane >> 2);
  tr[1] = tr[0] + 8;
  qrow[0] = mt * M + tr[0];
  qrow[1] = mt * M + tr[1];
  // Shared-memory byte addresses of this lane's ldmatrix rows, computed once: slab_off's swizzle depends only on
  // the row and the chunk within a slab, so every k step's address is one of these plus an immediate. Address
  // arithmetic in the loops was most of the kernel's instructions (ncu, H200, 256 x h_q=9 at 320/256: 16.3M -> 7.1M
  // instructions, 46.2 -> 44.5 us; without page copies it now runs in 31 us, so the copies bound it).
  const uint32_t q_base = smem_u32(q_s);
  const uint32_t k_base = smem_u32(k_s);
  const uint32_t p_base = smem_u32(p_s);
  const uint32_t bars = k_base + S * TL::kBlockBytes + TL::kPBytes + TL::kRedBytes;  // stage s completes on bars + 8 s
  // a_ld: A operands (Q and P, both M-row tiles) at k step u of a slab; k_ld: K at k step u; v_ld: V column tile np.
  uint32_t a_ld[4], k_ld[4], v_ld[TL::kNTiles / 2];
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    a_ld[u] = 2 * slab_off(wr * 16 + (lane & 15), 2 * u + (lane >> 4), M);
    k_ld[u] = 2 * slab_off(wc * 16 + (lane & 7) + ((lane >> 4) << 3), 2 * u + ((lane >> 3) & 1), kPage);
  }
#pragma unroll
  for (int np = 0; np < TL::kNTiles / 2; ++np)
    v_ld[np] = 2 * slab_off((lane & 7) + ((lane >> 3) & 1) * 8, (wc * TL::kColsPerWarp + np * 16) / 8 + (lane >> 4), kPage);
  static_assert(kPage == 64, "P V steps of 16 keys: 4 per page, 1024 elements apart");
  if (tid == 0) {
    for (int s = 0; s < S; ++s) mbar_init(bars + s * 8);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();
  uint32_t phase = 0;  // bit s: the parity stage s's barrier completes with next
  // Q's loaders (and zero_tail's): thread tid copies chunk lch of every 64-column slab of row lrow.
  const int lch = tid & 7, lrow = tid >> 3;

  // Q tile of request r: rows ordered (query i, head j of the group); rows past `rows` are zero. A request's Q
  // is copied under the previous request's epilogue (one commit group of its own).
  auto load_q = [&](int r) {
    const int row = lrow, qr = mt * M + row;  // NT / 8 == M: one pass
    const bool ok = qr < p.rows;
    const int i = ok ? qr / p.g : 0, j = ok ? qr % p.g : 0;
    const T* src = qg + r * p.q_bs + i * p.q_ss + (h * p.g + j) * p.q_hs + lch * 8;
    const uint32_t d = q_base + 2 * slab_off(row, lch, M);
#pragma unroll
    for (int sl = 0; sl < CH / 8; ++sl) cp_async16(d + sl * M * 128, src + sl * 64, ok ? 16 : 0);
    cp_async_commit();
  };
  if (begin_req <= end_req) load_q(begin_req);  // a part past the batch's end has no work (begin_req == b)

  for (int req = begin_req; req <= end_req; ++req) {
    const int len = p.seqlens[req];
    const int nblk = (len + kPage - 1) / kPage;
    const int first = req == begin_req ? begin_blk : 0;
    const int last = req == end_req ? end_blk : nblk;
    const int n = last - first;
    const int split = req == begin_req ? begin_split : 0;
    const int* bt = p.block_table + static_cast<int64_t>(req) * p.bt_stride;

    // Cache page `page` into ring stage `stage`: thread 0 copies its slabs, whole (rows past the sequence's end
    // included: S masks them, and zero_tail clears their V rows).
    auto load_page = [&](int stage, int page) {
      if (tid != 0) return;
      const uint32_t bar = bars + stage * 8;
      mbar_expect(bar, TL::kBlockBytes);
#pragma unroll
      for (int sl = 0; sl < CH / 8; ++sl) tma_slab(k_base + stage * TL::kBlockBytes + sl * kPage * 128, &p.k_map, bar, sl * 64, h, page);
    };
    // Zero V rows [valid, kPage) of stage `stage` (the request's last page): P is 0 there, but the cache may hold
    // NaN, and 0 * NaN is NaN. Thread tid zeroes chunk lch of rows lrow + NT/8 * pass in each V slab (slab_off's
    // swizzle, with row & 7 == lrow & 7).
    auto zero_tail = [&](int stage, int valid) {
      T* v = k_s + stage * (TL::kBlockBytes / 2) + ((lch ^ (lrow & 7)) << 3);
#pragma unroll
      for (int row = lrow; row < kPage; row += NT / 8) {
        if (row < valid) continue;
#pragma unroll
        for (int sl = 0; sl < DV / 64; ++sl) *reinterpret_cast<uint4*>(v + sl * kPage * 64 + row * 64) = make_uint4(0, 0, 0, 0);
      }
      fence_proxy_async();  // before a later TMA copy into this stage
      __syncthreads();
    };
#pragma unroll
    for (int s = 0; s < S - 1; ++s)
      if (s < n) load_page(s, tid == 0 ? bt[first + s] : 0);
    // The block-table entry of the page the next iteration loads (thread 0's), read one iteration early so its
    // latency is not in front of that iteration's copies.
    int next_page = tid == 0 && S - 1 < n ? bt[first + S - 1] : 0;

    // Tiles of up to 32 rows keep this warp's Q fragments (its 16 rows, every k step) in registers, read from shared
    // memory once per request instead of once per page: Q is the A operand of every S, so its re-reads were a third
    // of the loop's shared-memory reads. The 64-row tile (512 threads, 128 registers each) re-reads qf[0] per k step.
    // Q's copy is this thread's only cp.async group.
    constexpr bool kQRegs = R <= 2;
    uint32_t qf[kQRegs ? DQK / 16 : 1][4];
    cp_async_wait<0>();
    __syncthreads();
    if constexpr (kQRegs) {
#pragma unroll
      for (int k = 0; k < DQK / 16; ++k) ldsm_x4(qf[k], q_base + a_ld[k % 4] + k / 4 * M * 128);
    }

    int lim[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      lim[e] = len;
      if (p.causal) lim[e] = max(0, min(len, len - p.s_q + qrow[e] / p.g + 1));
    }
    float o[TL::kNTiles][4];
#pragma unroll
    for (int t = 0; t < TL::kNTiles; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    for (int it = 0; it < n; ++it) {
      __syncthreads();  // every warp is past page it - 1, whose stage the copy below refills
      if (it + S - 1 < n) load_page((it + S - 1) % S, next_page);
      if (tid == 0 && it + S < n) next_page = bt[first + it + S];
      const int stage = it % S, blk = first + it;
      mbar_wait(bars + stage * 8, (phase >> stage) & 1);
      phase ^= 1u << stage;
      if (len - blk * kPage < kPage) zero_tail(stage, len - blk * kPage);
      const uint32_t kb = k_base + stage * TL::kBlockBytes;

      // S = Q K^T for rows 16*wr.., keys 16*wc.. of this page: even and odd k steps accumulate separately
      // (two chains of DQK/32 mma per key tile instead of one of DQK/16).
      float sc[2][4], sc2[2][4];
#pragma unroll
      for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[t][e] = sc2[t][e] = 0.f;
#pragma unroll
      for (int sl = 0; sl < DQK / 64; ++sl) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          uint32_t bq[4];
          const uint32_t* a = qf[kQRegs ? sl * 4 + u : 0];
          if constexpr (!kQRegs) ldsm_x4(qf[0], q_base + a_ld[u] + sl * M * 128);
          ldsm_x4(bq, kb + k_ld[u] + sl * kPage * 128);
          float(&acc)[2][4] = (u & 1) ? sc2 : sc;
          mma16816<T>(acc[0], a, bq[0], bq[1]);
          mma16816<T>(acc[1], a, bq[2], bq[3]);
        }
      }
#pragma unroll
      for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) sc[t][e] += sc2[t][e];
      // Mask by length/causality, then the row max over this warp's keys.
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int t = 0; t < 2; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = blk * kPage + wc * 16 + t * 8 + (lane & 3) * 2 + (e & 1);
          const float x = key < lim[e >> 1] ? sc[t][e] * p.scale_log2 : -INFINITY;
          sc[t][e] = x;
          mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
      }
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        mx[e] = fmaxf(mx[e], __shfl_xor_sync(0xffffffff, mx[e], 1));
        mx[e] = fmaxf(mx[e], __shfl_xor_sync(0xffffffff, mx[e], 2));
        if ((lane & 3) == 0) red_max[wc * M + tr[e]] = mx[e];
      }
      row_group_sync(wr);
      float alpha[2], m_use[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        float mn = m[e];
#pragma unroll
        for (int c = 0; c < kColWarps; ++c) mn = fmaxf(mn, red_max[c * M + tr[e]]);
        m_use[e] = mn == -INFINITY ? 0.f : mn;
        alpha[e] = exp2f(m[e] - m_use[e]);
        m[e] = mn;
        l[e] *= alpha[e];
      }
      // Probabilities to bf16/fp16 in shared memory for the whole row group.
#pragma unroll
      for (int t = 0; t < 2; ++t) {
#pragma unroll
        for (int e2 = 0; e2 < 2; ++e2) {
          const float p0 = exp2f(sc[t][2 * e2] - m_use[e2]);
          const float p1 = exp2f(sc[t][2 * e2 + 1] - m_use[e2]);
          l[e2] += p0 + p1;
          const int key = wc * 16 + t * 8 + (lane & 3) * 2;
          *reinterpret_cast<uint32_t*>(p_s + slab_off(tr[e2], key >> 3, M) + (key & 7)) = Pack<T>::two(p0, p1);
        }
      }
      if (__any_sync(0xffffffff, alpha[0] != 1.f || alpha[1] != 1.f)) {  // skip when no row max moved
#pragma unroll
        for (int t = 0; t < TL::kNTiles; ++t) {
          o[t][0] *= alpha[0];
          o[t][1] *= alpha[0];
          o[t][2] *= alpha[1];
          o[t][3] *= alpha[1];
        }
      }
      row_group_sync(wr);
      // O += P V, V = first DV columns of the page.
#pragma unroll
      for (int kk = 0; kk < kPage / 16; ++kk) {
        uint32_t a[4];
        ldsm_x4(a, p_base + a_ld[kk]);
#pragma unroll
        for (int np = 0; np < TL::kNTiles / 2; ++np) {
          uint32_t bv[4];
          ldsm_x4_t(bv, kb + v_ld[np] + kk * 16 * 128);
          mma16816<T>(o[2 * np], a, bv[0], bv[1]);
          mma16816<T>(o[2 * np + 1], a, bv[2], bv[3]);
        }
      }
    }

    // Epilogue: total row sums across the 4 column warps, then out/lse or fp32 partials.
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      l[e] += __shfl_xor_sync(0xffffffff, l[e], 1);
      l[e] += __shfl_xor_sync(0xffffffff, l[e], 2);
      if ((lane & 3) == 0) red_sum[wc * M + tr[e]] = l[e];
    }
    __syncthreads();
    if (req < end_req) load_q(req + 1);  // every warp is past its last S, so the Q tile is free
    const int n_split = p.num_splits[req + 1] - p.num_splits[req];
    const int slot = p.num_splits[req] + split;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float lt = 0.f;
#pragma unroll
      for (int c = 0; c < kColWarps; ++c) lt += red_sum[c * M + tr[e]];
      const bool empty = !(lt > 0.f);
      const float inv = empty ? 0.f : 1.f / lt;
      const float lse_v = empty ? (n_split == 1 ? INFINITY : -INFINITY) : (m[e] + __log2f(lt)) * 0.69314718055994531f;
      if (qrow[e] >= p.rows) continue;
      const int i = qrow[e] / p.g, hq = h * p.g + qrow[e] % p.g;
      const int col0 = wc * TL::kColsPerWarp + (lane & 3) * 2;
      if (n_split == 1) {
        T* dst = static_cast<T*>(p.out) + ((static_cast<int64_t>(req) * p.s_q + i) * p.h_q + hq) * DV + col0;
#pragma unroll
        for (int t = 0; t < TL::kNTiles; ++t)
          *reinterpret_cast<uint32_t*>(dst + t * 8) = Pack<T>::two(o[t][2 * e] * inv, o[t][2 * e + 1] * inv);
        if (wc == 0 && (lane & 3) == 0) p.lse[(static_cast<int64_t>(req) * p.h_q + hq) * p.s_q + i] = lse_v;
      } else {
        const int64_t row_id = (static_cast<int64_t>(slot) * p.h_kv + h) * p.rows + qrow[e];
        float* dst = p.o_acc + row_id * DV + col0;
#pragma unroll
        for (int t = 0; t < TL::kNTiles; ++t)
          *reinterpret_cast<float2*>(dst + t * 8) = make_float2(o[t][2 * e] * inv, o[t][2 * e + 1] * inv);
        if (wc == 0 && (lane & 3) == 0) p.lse_acc[row_id] = lse_v;
      }
    }
    __syncthreads();  // P and the reductions are reused by the next request of this part
  }
}

// Merge the fp32 partials of split requests: one warp per (request, kv head, row), kCombineWarps rows per
// block (8, as FlashMLA's combine: at b=64 h_q=16 varlen 8 rows per block measured faster than 4, H200).
constexpr int kCombineWarps = 8;
template <typename T, int DV>
__global__ void __launch_bounds__(kCombineWarps * 32) mla_combine_kernel(const __grid_constant__ MlaParams p) {
  const int req = blockIdx.x;
  const int lane = threadIdx.x & 31;
  const int gr = blockIdx.y * kCombineWarps + (threadIdx.x >> 5);
  const int base = p.num_splits[req], n = p.num_splits[req + 1] - base;  // written before the decode grid
  if (n <= 1 || gr >= p.h_kv * p.rows) return;
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  const int h = gr / p.rows, qrow = gr % p.rows;
  auto row_id = [&](int s) { return (static_cast<int64_t>(base + s) * p.h_kv + h) * p.rows + qrow; };
  // Lane l owns columns 4l + 128k. The loads of a pair of pieces are in flight together, and the first pair's
  // are issued before the log-sum-exps are read, so their latencies overlap (n >= 2 here).
  constexpr int kChunks = (DV + 127) / 128;
  float4 va[kChunks], vb[kChunks];
  auto load = [&](float4 (&v)[kChunks], int s) {
    const float* src = p.o_acc + row_id(s) * DV;
#pragma unroll
    for (int k = 0; k < kChunks; ++k)
      if (lane * 4 + k * 128 < DV) v[k] = *reinterpret_cast<const float4*>(src + lane * 4 + k * 128);
  };
  load(va, 0);
  load(vb, 1);
  // Lane s holds piece s's log-sum-exp; pieces 32 and up (a request split over more than 32 parts) are read again.
  const float mine = lane < n ? p.lse_acc[row_id(lane)] : -INFINITY;
  float mx = mine;
  for (int s = lane + 32; s < n; s += 32) mx = fmaxf(mx, p.lse_acc[row_id(s)]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
  const bool empty = mx == -INFINITY;
  float sum = empty ? 0.f : __expf(mine - mx);
  for (int s = lane + 32; s < n && !empty; s += 32) sum += __expf(p.lse_acc[row_id(s)] - mx);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
  const float lse = empty ? INFINITY : mx + __logf(sum);
  const float w_mine = __expf(mine - lse);
  auto weight = [&](int s) { return s < 32 ? __shfl_sync(0xffffffff, w_mine, s) : __expf(p.lse_acc[row_id(s)] - lse); };
  float4 acc[kChunks];
#pragma unroll
  for (int k = 0; k < kChunks; ++k) acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
  auto add = [&](const float4 (&v)[kChunks], float w) {
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      if (lane * 4 + k * 128 >= DV) continue;
      acc[k].x += w * v[k].x;
      acc[k].y += w * v[k].y;
      acc[k].z += w * v[k].z;
      acc[k].w += w * v[k].w;
    }
  };
  for (int s = 0; s < n && !empty; s += 2) {
    add(va, weight(s));
    if (s + 1 < n) add(vb, weight(s + 1));
    if (s + 2 < n) load(va, s + 2);
    if (s + 3 < n) load(vb, s + 3);
  }
  const int i = qrow / p.g, hq = h * p.g + qrow % p.g;
  T* dst = static_cast<T*>(p.out) + ((static_cast<int64_t>(req) * p.s_q + i) * p.h_q + hq) * DV;
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int c = lane * 4 + k * 128;
    if (c < DV) *reinterpret_cast<uint2*>(dst + c) = make_uint2(Pack<T>::two(acc[k].x, acc[k].y), Pack<T>::two(acc[k].z, acc[k].w));
  }
  if (lane == 0) p.lse[(static_cast<int64_t>(req) * p.h_q + hq) * p.s_q + i] = lse;
}

template <typename T, int DV>
void launch_combine(const MlaParams& p, cudaStream_t stream);

template <typename T, int DQK, int DV, int R, int CTAS>
void launch_decode(const MlaParams& p, cudaStream_t stream) {
  using TL = Tile<DQK, DV, R, CTAS>;
  auto kernel = mla_decode_kernel<T, DQK, DV, R, CTAS>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, TL::kSmem);
  const int m_tiles = (p.rows + TL::M - 1) / TL::M;
  dim3 grid(p.num_parts, p.h_kv, m_tiles);
  kernel<<<grid, TL::kThreads, TL::kSmem, stream>>>(p);
  launch_combine<T, DV>(p, stream);
}

// The combine kernel is launched as a programmatic dependent: its launch overlaps the decode kernel,
// and griddepcontrol.wait holds it until the decode grid has finished and its writes are visible.
template <typename T, int DV>
void launch_combine(const MlaParams& p, cudaStream_t stream) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(p.b, (p.h_kv * p.rows + kCombineWarps - 1) / kCombineWarps);
  cfg.blockDim = dim3(kCombineWarps * 32);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  cudaLaunchKernelEx(&cfg, mla_combine_kernel<T, DV>, p);
}

}  // namespace mlabatch
