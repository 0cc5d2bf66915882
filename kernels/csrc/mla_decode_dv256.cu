// Instantiates the decode + combine kernels for head_dim_v = 256 (d_qk = 256 and 320, bf16 and fp16).
#include "mla_dispatch.cuh"

namespace mlabatch {
template void run_mla_decode_dv<256>(const MlaParams&, int, bool, cudaStream_t);
}  // namespace mlabatch
