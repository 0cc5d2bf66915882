// Instantiates the decode + combine kernels for head_dim_v = 192 (d_qk = 192 and 256, bf16 and fp16).
#include "mla_dispatch.cuh"

namespace mlabatch {
template void run_mla_decode_dv<192>(const MlaParams&, int, bool, cudaStream_t);
}  // namespace mlabatch
