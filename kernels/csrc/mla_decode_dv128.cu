// Instantiates the decode + combine kernels for head_dim_v = 128 (d_qk = 128 and 192, bf16 and fp16).
#include "mla_dispatch.cuh"

namespace mlabatch {
template void run_mla_decode_dv<128>(const MlaParams&, int, bool, cudaStream_t);
}  // namespace mlabatch
