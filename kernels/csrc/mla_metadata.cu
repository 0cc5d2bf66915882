// GPU split-KV scheduler for the cuda backend, FlashMLA's packing: every request costs its pages plus
// kFixedOverhead, each part gets a payload of ceil(total / parts) + kFixedOverhead, and parts take requests
// in order while the rest of the next one fits; a request is split only where it does not (the piece
// that starts the next part pays the overhead again). Same-length batches thus split nothing, and the
// combine kernel has nothing to do. One warp, no host sync, so it runs inside a CUDA graph.
// (kernels/scheduler.py cuts the same cost line into equal spans with tensor ops instead: it serves the
// torch backend and batches beyond kGpuSchedMaxBatch; any valid schedule is correct for every kernel.)
#include <climits>

#include "mla_params.h"

namespace mlabatch {

static_assert(kMetadataSize >= 5, "a part's metadata holds begin_req, begin_blk, end_req, end_blk, begin_split");

__global__ void __launch_bounds__(32) mla_metadata_kernel(const int* __restrict__ seqlens, int b, int parts,
                                                          int* __restrict__ meta, int* __restrict__ num_splits) {
  extern __shared__ int pages[];  // [b] pages per request
  long long total = 0;
  for (int i = threadIdx.x; i < b; i += 32) {
    pages[i] = (seqlens[i] + kPage - 1) / kPage;
    total += pages[i] + kFixedOverhead;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffff, total, o);
  __syncwarp();
  if (threadIdx.x != 0) return;
  const long long payload = (total + parts - 1) / parts + kFixedOverhead;
  int req = 0, blk = 0, split = 0, pieces = 0;  // where the next part starts; pieces so far
  num_splits[0] = 0;
  for (int p = 0; p < parts; ++p) {
    int* m = meta + p * kMetadataSize;
    m[0] = req;
    m[1] = blk;
    m[4] = split;
    long long remain = p == parts - 1 ? LLONG_MAX : payload;  // the last part takes whatever is left
    while (req < b) {
      const int left = pages[req] - blk;
      if (remain >= left + kFixedOverhead) {  // the rest of this request fits
        remain -= left + kFixedOverhead;
        pieces += split + 1;
        num_splits[req + 1] = pieces;
        ++req;
        blk = split = 0;
      } else {
        if (remain > kFixedOverhead) {  // a piece of it fits: split here
          blk += static_cast<int>(remain - kFixedOverhead);
          ++split;
        }
        break;
      }
    }
    m[2] = blk > 0 ? req : req - 1;
    m[3] = blk > 0 ? blk : (req > 0 ? pages[req - 1] : 0);
    for (int f = 5; f < kMetadataSize; ++f) m[f] = 0;
  }
}

cudaError_t launch_mla_metadata(const int* seqlens, int b, int parts, int* meta, int* num_splits, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(b) * sizeof(int);
  cudaError_t err = cudaFuncSetAttribute(mla_metadata_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  mla_metadata_kernel<<<1, 32, smem, stream>>>(seqlens, b, parts, meta, num_splits);
  return cudaGetLastError();
}

}  // namespace mlabatch
