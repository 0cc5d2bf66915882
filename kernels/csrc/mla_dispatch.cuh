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

// Row tiles: 16 or 32 rows on the mma.sync kernel; kQTileRows (FlashMLA's 64) on the wgmma kernel where
// each warpgroup's half of d_v starts on a 64-column slab (d_v 192 stays on mma.sync). Tiles of up to
// kTwoCtaMaxRows rows of narrow heads run two CTAs per SM when the schedule has more parts than SMs.
template <typename T, int DQK, int DV>
void launch_rows(const MlaParams& p, cudaStream_t stream) {
  static_assert(kTwoCtaMaxRows % 16 == 0 && kQTileRows % 16 == 0, "mma.sync tiles are 16-row groups");
  if constexpr (DQK <= kTwoCtaMaxDqk) {
    if (p.rows <= kTwoCtaMaxRows && p.num_parts * p.h_kv > num_sms())
      return launch_decode<T, DQK, DV, kTwoCtaMaxRows / 16, 2>(p, stream);
  }
  if (p.rows <= 16)
    launch_decode<T, DQK, DV, 1, 1>(p, stream);
  else if (p.rows <= 32)
    launch_decode<T, DQK, DV, 2, 1>(p, stream);
  else if constexpr ((DV / 2) % 64 == 0)
    launch_decode_wgmma<T, DQK, DV>(p, stream);
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
