// Torch bindings of the CUDA extension: mla_metadata (GPU scheduler) and mla_decode (decode + combine).
// Shapes and dtypes are validated in Python (kernels/validate.py); this file checks what the kernels
// assume about devices, layout and alignment, allocates outputs, and launches on the current stream.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cudaTypedefs.h>

#include "mla_params.h"

// kernels/limits.py's SUPPORTED_D_V (e.g. 128,192,...), passed by kernels/build.py to this C++ compile only.
#ifndef MLA_SUPPORTED_D_V
#error "MLA_SUPPORTED_D_V must be defined by kernels/build.py"
#endif
#define MLA_STRINGIFY(...) #__VA_ARGS__
#define MLA_LIST_TEXT(list) MLA_STRINGIFY(list)

namespace {

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": ", cudaGetErrorString(err));
}

std::vector<at::Tensor> mla_metadata(const at::Tensor& seqlens, int64_t parts) {
  TORCH_CHECK(seqlens.is_cuda() && seqlens.scalar_type() == at::kInt && seqlens.dim() == 1, "cache_seqlens: int32 CUDA vector");
  TORCH_CHECK(seqlens.numel() >= 1 && seqlens.numel() <= mlabatch::kGpuSchedMaxBatch, "GPU scheduler handles 1..",
              mlabatch::kGpuSchedMaxBatch, " sequences");
  TORCH_CHECK(parts >= 1, "parts must be >= 1");
  const c10::cuda::CUDAGuard guard(seqlens.device());
  auto lens = seqlens.contiguous();
  const int b = static_cast<int>(lens.numel());
  auto opts = lens.options();
  auto meta = at::empty({parts, mlabatch::kMetadataSize}, opts);
  auto splits = at::empty({b + 1}, opts);
  check_cuda(mlabatch::launch_mla_metadata(lens.data_ptr<int>(), b, static_cast<int>(parts), meta.data_ptr<int>(),
                                           splits.data_ptr<int>(), c10::cuda::getCurrentCUDAStream()),
             "mla_metadata launch");
  return {meta, splits};
}

// k_cache [blocks, page, h_kv, d_qk] as a TMA tensor map whose box is one 64-column slab of one page
// (64 x 64 elements, 128-byte swizzle: the layout wgmma reads). A slab row is 128 bytes, so the L2 promotion is
// 128 bytes (FlashMLA's); 256 also pulled in each row's neighbouring 128 bytes, which another slab's copy reads
// later, and moved ~30% more L2 sectors (ncu, H200).
CUtensorMap k_cache_map(const at::Tensor& k, bool fp16) {
  static const auto encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    check_cuda(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found),
               "cuTensorMapEncodeTiled lookup");
    TORCH_CHECK(found == cudaDriverEntryPointSuccess && fn != nullptr, "the CUDA driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(k.size(3)), static_cast<cuuint64_t>(k.size(1)),
                              static_cast<cuuint64_t>(k.size(2)), static_cast<cuuint64_t>(k.size(0))};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(k.stride(1) * 2), static_cast<cuuint64_t>(k.stride(2) * 2),
                                 static_cast<cuuint64_t>(k.stride(0) * 2)};
  const cuuint32_t box[4] = {64, static_cast<cuuint32_t>(mlabatch::kPage), 1, 1};
  const cuuint32_t step[4] = {1, 1, 1, 1};
  CUtensorMap map{};
  const CUresult r = encode(&map, fp16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, k.data_ptr(),
                            dims, strides, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TORCH_CHECK(r == CUDA_SUCCESS, "cuTensorMapEncodeTiled failed for k_cache (error ", static_cast<int>(r), ")");
  return map;
}

// Run the decode instantiated for head_dim_v == d_v (one of DVs); false if d_v is none of them.
template <int... DVs>
bool run_decode(int64_t d_v, const mlabatch::MlaParams& p, int d_qk, bool fp16, cudaStream_t stream) {
  return ((d_v == DVs && (mlabatch::run_mla_decode_dv<DVs>(p, d_qk, fp16, stream), true)) || ...);
}

std::vector<at::Tensor> mla_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& block_table,
                                   const at::Tensor& seqlens, int64_t d_v, const at::Tensor& meta,
                                   const at::Tensor& num_splits, double scale, bool causal) {
  for (const auto* t : {&q, &k_cache, &block_table, &seqlens, &meta, &num_splits})
    TORCH_CHECK(t->is_cuda() && t->device() == q.device(), "all mla_decode inputs must be on the same CUDA device");
  TORCH_CHECK(q.stride(-1) == 1 && k_cache.stride(-1) == 1, "q and k_cache need a contiguous last dim");
  TORCH_CHECK(block_table.stride(-1) == 1, "block_table rows must be contiguous");
  const int64_t elem_align = 8;  // 16-byte cp.async
  for (int d = 0; d < 3; ++d)
    TORCH_CHECK(q.stride(d) % elem_align == 0 && k_cache.stride(d) % elem_align == 0, "q/k_cache strides must be multiples of 8 elements");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(q.data_ptr()) % 16 == 0 && reinterpret_cast<uintptr_t>(k_cache.data_ptr()) % 16 == 0,
              "q and k_cache must be 16-byte aligned");
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t b = q.size(0), s_q = q.size(1), h_q = q.size(2), d_qk = q.size(3), h_kv = k_cache.size(2);
  const int64_t g = h_q / h_kv, rows = s_q * g, parts = meta.size(0);
  auto out = at::empty({b, s_q, h_q, d_v}, q.options());
  auto lse = at::empty({b, h_q, s_q}, q.options().dtype(at::kFloat));
  auto o_acc = at::empty({b + parts, h_kv, rows, d_v}, q.options().dtype(at::kFloat));
  auto lse_acc = at::empty({b + parts, h_kv, rows}, q.options().dtype(at::kFloat));
  auto lens = seqlens.contiguous();
  auto meta_c = meta.contiguous();
  auto splits_c = num_splits.contiguous();

  mlabatch::MlaParams p{};
  p.q = q.data_ptr();
  p.k = k_cache.data_ptr();
  p.block_table = block_table.data_ptr<int>();
  p.seqlens = lens.data_ptr<int>();
  p.meta = meta_c.data_ptr<int>();
  p.num_splits = splits_c.data_ptr<int>();
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  p.o_acc = o_acc.data_ptr<float>();
  p.lse_acc = lse_acc.data_ptr<float>();
  p.b = static_cast<int>(b);
  p.s_q = static_cast<int>(s_q);
  p.h_q = static_cast<int>(h_q);
  p.h_kv = static_cast<int>(h_kv);
  p.g = static_cast<int>(g);
  p.rows = static_cast<int>(rows);
  p.num_parts = static_cast<int>(parts);
  p.bt_stride = static_cast<int>(block_table.stride(0));
  p.bt_cols = static_cast<int>(block_table.size(1));
  p.causal = causal ? 1 : 0;
  p.q_bs = q.stride(0);
  p.q_ss = q.stride(1);
  p.q_hs = q.stride(2);
  p.k_bs = k_cache.stride(0);
  p.k_rs = k_cache.stride(1);
  p.k_hs = k_cache.stride(2);
  TORCH_CHECK(scale > 0, "softmax_scale must be positive (the kernels take row maxima before scaling), got ", scale);
  p.scale_log2 = static_cast<float>(scale * 1.4426950408889634);
  const bool fp16 = q.scalar_type() == at::kHalf;
  TORCH_CHECK(fp16 || q.scalar_type() == at::kBFloat16, "cuda backend supports bfloat16 and float16");
  p.k_map = k_cache_map(k_cache, fp16);
  TORCH_CHECK(d_qk == d_v || d_qk == d_v + mlabatch::kDRope, "d_qk must be d_v or d_v + ", mlabatch::kDRope);
  const bool launched = run_decode<MLA_SUPPORTED_D_V>(d_v, p, static_cast<int>(d_qk), fp16, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(launched, "head_dim_v must be one of " MLA_LIST_TEXT(MLA_SUPPORTED_D_V));
  check_cuda(cudaGetLastError(), "mla_decode launch");
  return {out, lse};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mlabatch MLA decode kernels (sm_90a)";
  m.def("mla_metadata", &mla_metadata, "GPU split-KV scheduler metadata");
  m.def("mla_decode", &mla_decode, "paged MLA decode with split-KV combine");
}
