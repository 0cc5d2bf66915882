// Kernel parameters shared by the host bindings (mla_api.cpp) and the CUDA sources; no device code here.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "mla_limits.h"

namespace mlabatch {

struct MlaParams {
  CUtensorMap k_map;      // k_cache as [blocks, page, h_kv, d_qk] for TMA: 64 x 64 boxes, 128-byte swizzle
  const void* q;
  const void* k;
  const int* block_table;
  const int* seqlens;
  const int* meta;        // [num_parts, kMetadataSize]: begin_req, begin_blk, end_req, end_blk, begin_split
  const int* num_splits;  // [b + 1], prefix sums of pieces per request
  void* out;              // [b, s_q, h_q, d_v]
  float* lse;             // [b, h_q, s_q]
  float* o_acc;           // [b + num_parts, h_kv, rows, d_v]
  float* lse_acc;         // [b + num_parts, h_kv, rows]
  int b, s_q, h_q, h_kv, g, rows, num_parts, bt_stride, bt_cols, causal;  // bt_cols: block_table.size(1)
  int64_t q_bs, q_ss, q_hs;  // q strides (elements)
  int64_t k_bs, k_rs, k_hs;  // k_cache strides: page, token, head
  float scale_log2;          // softmax_scale * log2(e)
};

template <int DV>
void run_mla_decode_dv(const MlaParams& p, int d_qk, bool fp16, cudaStream_t stream);
cudaError_t launch_mla_metadata(const int* seqlens, int b, int parts, int* meta, int* num_splits, cudaStream_t stream);

}  // namespace mlabatch
