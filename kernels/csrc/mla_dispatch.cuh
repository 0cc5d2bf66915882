// Kernel choice per call: which decode kernel and tile a (rows, head dims, schedule) gets.
#pragma once

#include "mla_decode.cuh"
#include "mla_decode_wgmma.cuh"

namespace mlabatch {

// Multiprocessors of the current device (cached per process; one device kind per process assumed).
inline int num_sms() {
  static int n = [] {
    int dev = 0, v = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev);
    return v;
  }();
  return n;
}

// Row tiles: tiles of more than 16 rows run the wgmma kernel with kQTileRows (FlashMLA's 64) rows, padded
// (32 rows on mma.sync ran at 0.75x of the padded wgmma tile on an H200), where each warpgroup's half of
// d_v starts on a 64-column slab (d_v 192 stays on mma.sync: 32- or 64-row tiles). Tiles of up to
// kTwoCtaMaxRows rows of narrow heads run two CTAs per SM when the schedule has more parts than SMs.
template <typename T, int DQK, int DV>
void launch_rows(const MlaParams& p, cudaStream_t stream) {
  static_assert(kTwoCtaMaxRows == 16 && kQTileRows == 64, "16-row mma.sync tiles, then 64-row tiles");
  if constexpr (DQK <= kTwoCtaMaxDqk) {
    if (p.rows <= kTwoCtaMaxRows && p.num_parts * p.h_kv > num_sms())
      return launch_decode<T, DQK, DV, kTwoCtaMaxRows / 16, 2>(p, stream);
  }
  if (p.rows <= 16)
    launch_decode<T, DQK, DV, 1, 1>(p, stream);
  else if constexpr ((DV / 2) % 64 == 0)
    launch_decode_wgmma<T, DQK, DV>(p, stream);
  else if (p.rows <= 32)
    launch_decode<T, DQK, DV, 2, 1>(p, stream);
  else
    launch_decode<T, DQK, DV, kQTileRows / 16, 1>(p, stream);
}

template <int DV>
void run_mla_decode_dv(const MlaParams& p, int d_qk, bool fp16, cudaStream_t stream) {
  if (d_qk == DV) {
    fp16 ? launch_rows<__half, DV, DV>(p, stream) : launch_rows<__nv_bfloat16, DV, DV>(p, stream);
  } else {
    fp16 ? launch_rows<__half, DV + kDRope, DV>(p, stream) : launch_rows<__nv_bfloat16, DV + kDRope, DV>(p, stream);
  }
}

}  // namespace mlabatch
