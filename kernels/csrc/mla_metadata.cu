// GPU split-KV scheduler: one launch, same result as kernels/scheduler.py::schedule (see its docstring).
// Costs (pages + fixed overhead) are laid on one line and cut into `parts` equal spans; a request's anchor
// is its pages, or one unit for an empty request. No host sync, so it can run inside a CUDA graph.
#include "mla_params.h"

namespace mlabatch {

constexpr int kSchedThreads = 256;
static_assert(kMetadataSize >= 5, "a part's metadata holds begin_req, begin_blk, end_req, end_blk, begin_split");

// Exclusive prefix sum of v[0..n) in place (shared memory), returning the total; all threads call it.
__device__ long long block_exclusive_scan(long long* v, int n, long long* partial) {
  const int t = threadIdx.x, per = (n + kSchedThreads - 1) / kSchedThreads;
  const int lo = min(n, t * per), hi = min(n, lo + per);
  long long s = 0;
  for (int i = lo; i < hi; ++i) s += v[i];
  partial[t] = s;
  __syncthreads();
  if (t == 0) {
    long long run = 0;
    for (int i = 0; i < kSchedThreads; ++i) {
      const long long x = partial[i];
      partial[i] = run;
      run += x;
    }
    partial[kSchedThreads] = run;
  }
  __syncthreads();
  long long run = partial[t];
  for (int i = lo; i < hi; ++i) {
    const long long x = v[i];
    v[i] = run;
    run += x;
  }
  __syncthreads();
  return partial[kSchedThreads];
}

__global__ void __launch_bounds__(kSchedThreads) mla_metadata_kernel(const int* __restrict__ seqlens, int b, int parts,
                                                                     int* __restrict__ meta, int* __restrict__ num_splits) {
  extern __shared__ long long sh[];
  long long* start = sh;         // [b] cost-line start of each request
  long long* cnt = sh + b;       // [b] pieces per request, then their prefix sums
  long long* partial = sh + 2 * b;  // [kSchedThreads + 1]
  const int t = threadIdx.x;
  for (int i = t; i < b; i += kSchedThreads) start[i] = (seqlens[i] + kPage - 1) / kPage + kFixedOverhead;
  __syncthreads();
  const long long total = block_exclusive_scan(start, b, partial);
  const long long width = max(1LL, (total + parts - 1) / parts);
  auto nb = [&](int i) { return static_cast<long long>((seqlens[i] + kPage - 1) / kPage); };
  auto a_lo = [&](int i) { return nb(i) > 0 ? start[i] + kFixedOverhead : start[i]; };
  auto a_hi = [&](int i) { return nb(i) > 0 ? start[i] + kFixedOverhead + nb(i) : start[i] + 1; };
  for (int i = t; i < b; i += kSchedThreads) cnt[i] = (a_hi(i) - 1) / width - a_lo(i) / width + 1;
  __syncthreads();
  const long long all = block_exclusive_scan(cnt, b, partial);
  for (int i = t; i < b; i += kSchedThreads) num_splits[i] = static_cast<int>(cnt[i]);
  if (t == 0) num_splits[b] = static_cast<int>(all);
  for (int p = t; p < parts; p += kSchedThreads) {
    const long long lo = p * width, hi = lo + width;
    int l = 0, r = b;  // begin_req: first request with a_hi > lo
    while (l < r) {
      const int mid = (l + r) / 2;
      if (a_hi(mid) > lo) r = mid; else l = mid + 1;
    }
    const int br = l;
    l = 0, r = b;  // end_req + 1: first request with a_lo >= hi
    while (l < r) {
      const int mid = (l + r) / 2;
      if (a_lo(mid) >= hi) r = mid; else l = mid + 1;
    }
    const int er = l - 1;
    int* m = meta + p * kMetadataSize;
    const bool empty = br > er;
    m[0] = br;
    m[2] = er;
    m[1] = empty ? 0 : static_cast<int>(min(max(lo - (start[br] + kFixedOverhead), 0LL), nb(br)));
    m[3] = empty ? 0 : static_cast<int>(min(max(hi - (start[er] + kFixedOverhead), 0LL), nb(er)));
    m[4] = empty ? 0 : static_cast<int>(p - a_lo(br) / width);
    for (int f = 5; f < kMetadataSize; ++f) m[f] = 0;
  }
}

cudaError_t launch_mla_metadata(const int* seqlens, int b, int parts, int* meta, int* num_splits, cudaStream_t stream) {
  const size_t smem = (2 * static_cast<size_t>(b) + kSchedThreads + 1) * sizeof(long long);
  cudaError_t err = cudaFuncSetAttribute(mla_metadata_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  mla_metadata_kernel<<<1, kSchedThreads, smem, stream>>>(seqlens, b, parts, meta, num_splits);
  return cudaGetLastError();
}

}  // namespace mlabatch
