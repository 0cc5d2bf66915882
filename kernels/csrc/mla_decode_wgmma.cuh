// Decode kernel for 64-row query tiles with wgmma (sm_90a): the compute-bound cases (h_q * s_q >= 64).
//
// One CTA = (scheduler part, kv head, 64 query rows), two warpgroups. Q and each 64-token page sit in
// shared memory as 64-column slabs with the 128-byte swizzle that wgmma reads directly (cp.async fills
// them, two page stages). Warpgroup w computes S for keys [32w, 32w+32) of the page (m64n32k16, A = Q,
// B = K, both K-major), the two exchange row maxima and write bf16/fp16 P into a swizzled slab, and
// warpgroup w accumulates output columns [w*DV/2, (w+1)*DV/2) in registers (m64n(DV/2)k16, A = P,
// B = V read N-major from the same page slabs). Online softmax in the exp2 domain; epilogue as in
// mla_decode.cuh (direct out/lse, or fp32 partials for the combine kernel).
#pragma once

#include "mla_decode.cuh"
#include "wgmma_ops.h"

namespace mlabatch {

template <int DQK, int DV>
struct WgTile {
  static constexpr int M = kQTileRows;
  static constexpr int kThreads = 256;
  static constexpr int kSlabs = DQK / 64;
  static constexpr int kSlabBytes = 64 * 128;  // 64 rows x 64 elements, 128-byte swizzled rows
  static constexpr int kTileBytes = kSlabs * kSlabBytes;  // Q tile or one page
  static constexpr int kStages = 2;
  static constexpr int kNHalf = DV / 2;  // output columns per warpgroup
  static constexpr int kSmem = 1024 + (1 + kStages) * kTileBytes + kSlabBytes + 4 * 64 * 4;
  static_assert(kNHalf % 64 == 0, "each warpgroup's V columns must start on a 64-column slab");
  static_assert(M == 64 && kPage == 64, "wgmma tiles are m64, and each warpgroup scores 32 keys of a 64-token page");
  static_assert(kSmem <= kSmemLimit, "shared memory");
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }
// Orders this thread's generic-proxy shared-memory writes before later async-proxy (wgmma) reads.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in a 128-byte-swizzled slab.
__device__ __forceinline__ uint32_t sw128(int row, int chunk) { return row * 128 + ((chunk ^ (row & 7)) << 4); }

// wgmma shared-memory descriptor with the 128-byte swizzle; lbo/sbo in bytes.
__device__ __forceinline__ uint64_t gmma_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>(lbo >> 4) << 16) |
         (static_cast<uint64_t>(sbo >> 4) << 32) | (1ull << 62);
}

template <typename T, int DQK, int DV>
__global__ void __launch_bounds__(256, 1) mla_decode_wgmma_kernel(const __grid_constant__ MlaParams p) {
  using TL = WgTile<DQK, DV>;
  constexpr int NH = TL::kNHalf, SL = TL::kSlabs, S = TL::kStages;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023) & ~1023u;  // swizzle patterns repeat every 1024 bytes
  unsigned char* smem = smem_raw + (base - raw);
  const uint32_t q_addr = base, k_addr = base + TL::kTileBytes, p_addr = base + (1 + S) * TL::kTileBytes;
  float* red_max = reinterpret_cast<float*>(smem + (1 + S) * TL::kTileBytes + TL::kSlabBytes);
  float* red_sum = red_max + 2 * 64;

  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wg = warp >> 2, wl = warp & 3;
  const int part = blockIdx.x, h = blockIdx.y, mt = blockIdx.z;
  const int* md = p.meta + part * kMetadataSize;
  const int begin_req = md[0], begin_blk = md[1], end_req = md[2], end_blk = md[3], begin_split = md[4];
  const T* qg = static_cast<const T*>(p.q);
  const T* kg = static_cast<const T*>(p.k);
  int tr[2], qrow[2];
  tr[0] = wl * 16 + (lane >> 2);
  tr[1] = tr[0] + 8;
  qrow[0] = mt * 64 + tr[0];
  qrow[1] = mt * 64 + tr[1];

  for (int req = begin_req; req <= end_req; ++req) {
    const int len = p.seqlens[req];
    const int nblk = (len + kPage - 1) / kPage;
    const int first = req == begin_req ? begin_blk : 0;
    const int last = req == end_req ? end_blk : nblk;
    const int n = last - first;
    const int split = req == begin_req ? begin_split : 0;
    const int* bt = p.block_table + static_cast<int64_t>(req) * p.bt_stride;

    // Chunks in slab-major order: thread tid always copies 16-byte chunk (tid & 7) of rows (tid >> 3) and
    // (tid >> 3) + 32 of every slab, so all indexing is shifts and compile-time offsets.
    const int ch = tid & 7, row_a = tid >> 3;
#pragma unroll
    for (int r2 = 0; r2 < 2; ++r2) {
      const int row = row_a + 32 * r2, qr = mt * 64 + row;
      const bool ok = qr < p.rows;
      const int i = ok ? qr / p.g : 0, j = ok ? qr % p.g : 0;
      const T* src = qg + req * p.q_bs + i * p.q_ss + (h * p.g + j) * p.q_hs + ch * 8;
      unsigned char* dst = smem + (q_addr - base) + sw128(row, ch);
#pragma unroll
      for (int sl = 0; sl < SL; ++sl) cp_async16(dst + sl * TL::kSlabBytes, src + sl * 64, ok ? 16 : 0);
    }
    auto load_page = [&](int stage, int blk) {
      const int page = bt[blk];
      const int valid = min(kPage, len - blk * kPage);
      const T* pg = kg + static_cast<int64_t>(page) * p.k_bs + h * p.k_hs;
      unsigned char* dst = smem + (k_addr - base) + stage * TL::kTileBytes;
#pragma unroll
      for (int r2 = 0; r2 < 2; ++r2) {
        const int row = row_a + 32 * r2;
        const bool ok = row < valid;
        const T* src = pg + (ok ? row : 0) * p.k_rs + ch * 8;
        unsigned char* d = dst + sw128(row, ch);
#pragma unroll
        for (int sl = 0; sl < SL; ++sl) cp_async16(d + sl * TL::kSlabBytes, src + sl * 64, ok ? 16 : 0);
      }
    };
    if (n > 0) load_page(0, first);
    cp_async_commit();

    int lim[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      lim[e] = len;
      if (p.causal) lim[e] = max(0, min(len, len - p.s_q + qrow[e] / p.g + 1));
    }
    float o[NH / 2];
#pragma unroll
    for (int t = 0; t < NH / 2; ++t) o[t] = 0.f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    for (int it = 0; it < n; ++it) {
      cp_async_wait<0>();
      fence_proxy_async();  // cp.async writes -> visible to wgmma (async proxy)
      __syncthreads();
      const uint32_t kb = k_addr + (it % S) * TL::kTileBytes;
      const int blk = first + it;

      float sc[16];
#pragma unroll
      for (int t = 0; t < 16; ++t) sc[t] = 0.f;
      wgmma_fence();
      fence_regs(sc);
      // Descriptors advance by adding (byte offset >> 4) to the start-address field.
      const uint64_t dq = gmma_desc(q_addr, 16, 1024), dk = gmma_desc(kb + wg * 32 * 128, 16, 1024);
#pragma unroll
      for (int s = 0; s < SL; ++s)
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          const uint64_t off = (s * TL::kSlabBytes + kk * 32) >> 4;
          Wgmma<T, 32, 0>::run(sc, dq + off, dk + off, s | kk);
        }
      wgmma_commit();
      // Next page's copies are issued while the tensor cores work on S; its buffer was last read by the
      // previous page's P V, which both warpgroups waited for before the barrier above.
      if (it + 1 < n) load_page((it + 1) % S, first + it + 1);
      cp_async_commit();
      wgmma_wait<0>();
      fence_regs(sc);

      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = blk * kPage + wg * 32 + j * 8 + (lane & 3) * 2 + (e & 1);
          const float x = key < lim[e >> 1] ? sc[4 * j + e] * p.scale_log2 : -INFINITY;
          sc[4 * j + e] = x;
          mx[e >> 1] = fmaxf(mx[e >> 1], x);
        }
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        mx[e] = fmaxf(mx[e], __shfl_xor_sync(0xffffffff, mx[e], 1));
        mx[e] = fmaxf(mx[e], __shfl_xor_sync(0xffffffff, mx[e], 2));
        if ((lane & 3) == 0) red_max[wg * 64 + tr[e]] = mx[e];
      }
      __syncthreads();
      float alpha[2], m_use[2];
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float mn = fmaxf(m[e], fmaxf(red_max[tr[e]], red_max[64 + tr[e]]));
        m_use[e] = mn == -INFINITY ? 0.f : mn;
        alpha[e] = exp2f(m[e] - m_use[e]);
        m[e] = mn;
        l[e] *= alpha[e];
      }
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int e2 = 0; e2 < 2; ++e2) {
          const float p0 = exp2f(sc[4 * j + 2 * e2] - m_use[e2]);
          const float p1 = exp2f(sc[4 * j + 2 * e2 + 1] - m_use[e2]);
          l[e2] += p0 + p1;
          const int key = wg * 32 + j * 8 + (lane & 3) * 2;
          *reinterpret_cast<uint32_t*>(smem + (p_addr - base) + sw128(tr[e2], key >> 3) + (key & 7) * 2) =
              Pack<T>::two(p0, p1);
        }
      if (__any_sync(0xffffffff, alpha[0] != 1.f || alpha[1] != 1.f)) {  // skip when no row max moved
#pragma unroll
        for (int t = 0; t < NH / 8; ++t) {
          o[4 * t] *= alpha[0];
          o[4 * t + 1] *= alpha[0];
          o[4 * t + 2] *= alpha[1];
          o[4 * t + 3] *= alpha[1];
        }
      }
      fence_proxy_async();  // P stores -> visible to wgmma
      __syncthreads();
      wgmma_fence();
      fence_regs(o);
      const uint64_t dp = gmma_desc(p_addr, 16, 1024);
      const uint64_t dv = gmma_desc(kb + (wg * NH / 64) * TL::kSlabBytes, TL::kSlabBytes, 1024);
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) Wgmma<T, NH, 1>::run(o, dp + ((kk * 32) >> 4), dv + ((kk * 16 * 128) >> 4), 1);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(o);
    }
    cp_async_wait<0>();

#pragma unroll
    for (int e = 0; e < 2; ++e) {
      l[e] += __shfl_xor_sync(0xffffffff, l[e], 1);
      l[e] += __shfl_xor_sync(0xffffffff, l[e], 2);
      if ((lane & 3) == 0) red_sum[wg * 64 + tr[e]] = l[e];
    }
    __syncthreads();
    const int n_split = p.num_splits[req + 1] - p.num_splits[req];
    const int slot = p.num_splits[req] + split;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float lt = red_sum[tr[e]] + red_sum[64 + tr[e]];
      const bool empty = !(lt > 0.f);
      const float inv = empty ? 0.f : 1.f / lt;
      const float lse_v = empty ? (n_split == 1 ? INFINITY : -INFINITY) : (m[e] + __log2f(lt)) * 0.69314718055994531f;
      if (qrow[e] >= p.rows) continue;
      const int i = qrow[e] / p.g, hq = h * p.g + qrow[e] % p.g;
      const int col0 = wg * NH + (lane & 3) * 2;
      if (n_split == 1) {
        T* dst = static_cast<T*>(p.out) + ((static_cast<int64_t>(req) * p.s_q + i) * p.h_q + hq) * DV + col0;
#pragma unroll
        for (int t = 0; t < NH / 8; ++t)
          *reinterpret_cast<uint32_t*>(dst + t * 8) = Pack<T>::two(o[4 * t + 2 * e] * inv, o[4 * t + 2 * e + 1] * inv);
        if (wg == 0 && (lane & 3) == 0) p.lse[(static_cast<int64_t>(req) * p.h_q + hq) * p.s_q + i] = lse_v;
      } else {
        const int64_t row_id = (static_cast<int64_t>(slot) * p.h_kv + h) * p.rows + qrow[e];
        float* dst = p.o_acc + row_id * DV + col0;
#pragma unroll
        for (int t = 0; t < NH / 8; ++t)
          *reinterpret_cast<float2*>(dst + t * 8) = make_float2(o[4 * t + 2 * e] * inv, o[4 * t + 2 * e + 1] * inv);
        if (wg == 0 && (lane & 3) == 0) p.lse_acc[row_id] = lse_v;
      }
    }
    __syncthreads();  // Q, P and the reductions are reused by the next request of this part
  }
}

template <typename T, int DQK, int DV>
void launch_decode_wgmma(const MlaParams& p, cudaStream_t stream) {
  using TL = WgTile<DQK, DV>;
  auto kernel = mla_decode_wgmma_kernel<T, DQK, DV>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, TL::kSmem);
  dim3 grid(p.num_parts, p.h_kv, (p.rows + TL::M - 1) / TL::M);
  kernel<<<grid, TL::kThreads, TL::kSmem, stream>>>(p);
  launch_combine<T, DV>(p, stream);
}

}  // namespace mlabatch
