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

// Row tiles: the 64-row wgmma kernel (FlashMLA's tile, padded) takes every tile whose d_v halves start on
// 64-column slabs (not d_v 192), except tiles of up to 16 rows of narrow heads (d_qk <= kTwoCtaMaxDqk):
// those run the 16-row mma.sync kernel, two CTAs per SM when the schedule has more parts than SMs
// (H200: 256 x h_q=9 at 320/256 56 us there against 65 us padded; 576/512 at h_q=16 175 us padded against
// 181 us on mma.sync). d_v 192 runs mma.sync with 16-, 32- or 64-row tiles.
template <typename T, int DQK, int DV>
void launch_rows(const MlaParams& p, cudaStream_t stream) {
  static_assert(kTwoCtaMaxRows == 16 && kQTileRows == 64, "16-row mma.sync tiles, then 64-row tiles");
  if constexpr (DQK <= kTwoCtaMaxDqk) {
    if (p.rows <= kTwoCtaMaxRows) {
      if (p.num_parts * p.h_kv > num_sms()) return launch_decode<T, DQK, DV, 1, 2>(p, stream);
      return launch_decode<T, DQK, DV, 1, 1>(p, stream);
    }
  }
  static_assert((DV / 2) % 64 == 0 || DQK <= kTwoCtaMaxDqk, "d_v 192 heads are narrow: their 16-row tiles are above");
  if constexpr ((DV / 2) % 64 == 0) {
    launch_decode_wgmma<T, DQK, DV>(p, stream);
  } else if (p.rows <= 32) {
    launch_decode<T, DQK, DV, 2, 1>(p, stream);
  } else {
    launch_decode<T, DQK, DV, kQTileRows / 16, 1>(p, stream);
  }
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
