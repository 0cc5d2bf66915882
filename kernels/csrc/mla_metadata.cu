// GPU split-KV scheduler for the cuda backend, FlashMLA's packing: every request costs its pages plus
// kFixedOverhead, each part gets a payload of ceil(total / parts) + kFixedOverhead, and parts take requests
// in order while the rest of the next one fits; a request is split only where it does not (the piece
// that starts the next part pays the overhead again). Same-length batches thus split nothing, and the
// combine kernel has nothing to do. One warp, no host sync, so it runs inside a CUDA graph.
// The walk is sequential: all 32 lanes run it in step (no divergent one-thread loop), the next request's
// page count is read one step ahead, and results are staged in shared memory and written out by all lanes
// (H200, b=256 over 132 parts: 34 us with one thread storing to global memory, 27 us this way).
// (kernels/scheduler.py cuts the same cost line into equal spans with tensor ops instead: it serves the
// torch backend and batches beyond kGpuSchedMaxBatch; any valid schedule is correct for every kernel.)
#include <climits>

#include "mla_params.h"

namespace mlabatch {

static_assert(kMetadataSize >= 5, "a part's metadata holds begin_req, begin_blk, end_req, end_blk, begin_split");

__global__ void __launch_bounds__(32) mla_metadata_kernel(const int* __restrict__ seqlens, int b, int parts,
                                                          int* __restrict__ meta, int* __restrict__ num_splits) {
  extern __shared__ int sh[];
  int* pages = sh;              // [b + 1] pages per request, and a 0 past the end (read ahead)
  int* splits = sh + b + 1;     // [b + 1] num_splits, staged
  int* rows = sh + 2 * b + 2;   // [parts, kMetadataSize] metadata, staged
  const int lane = threadIdx.x;
  long long total = 0;
  for (int i = lane; i < b; i += 32) {
    pages[i] = (seqlens[i] + kPage - 1) / kPage;
    total += pages[i] + kFixedOverhead;
  }
  if (lane == 0) {
    pages[b] = 0;
    splits[0] = 0;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffff, total, o);
  __syncwarp();
  const long long payload = (total + parts - 1) / parts + kFixedOverhead;
  // Where the next part starts, pieces so far, and the pages of the current and the last whole request.
  int req = 0, blk = 0, split = 0, pieces = 0, cur = pages[0], prev = 0;
  for (int p = 0; p < parts; ++p) {
    int* m = rows + p * kMetadataSize;
    if (lane == 0) {
      m[0] = req;
      m[1] = blk;
      m[4] = split;
    }
    long long remain = p == parts - 1 ? LLONG_MAX : payload;
    while (req < b) {
      const int nxt = pages[req + 1];  // read ahead: its latency overlaps this step
      const int left = cur - blk;
      if (remain < left + kFixedOverhead) {  // the rest of this request does not fit
        if (remain > kFixedOverhead) {  // a piece of it does: split here
          blk += static_cast<int>(remain - kFixedOverhead);
          ++split;
        }
        break;
      }
      remain -= left + kFixedOverhead;
      pieces += split + 1;
      if (lane == 0) splits[req + 1] = pieces;
      ++req;
      blk = split = 0;
      prev = cur;
      cur = nxt;
    }
    if (lane == 0) {
      m[2] = blk > 0 ? req : req - 1;
      m[3] = blk > 0 ? blk : prev;
#pragma unroll
      for (int f = 5; f < kMetadataSize; ++f) m[f] = 0;
    }
  }
  __syncwarp();
  for (int i = lane; i < parts * kMetadataSize; i += 32) meta[i] = rows[i];
  for (int i = lane; i <= b; i += 32) num_splits[i] = splits[i];
}

cudaError_t launch_mla_metadata(const int* seqlens, int b, int parts, int* meta, int* num_splits, cudaStream_t stream) {
  const size_t smem = (2 * static_cast<size_t>(b) + 2 + static_cast<size_t>(parts) * kMetadataSize) * sizeof(int);
  cudaError_t err = cudaFuncSetAttribute(mla_metadata_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  mla_metadata_kernel<<<1, 32, smem, stream>>>(seqlens, b, parts, meta, num_splits);
  return cudaGetLastError();
}

}  // namespace mlabatch
