// Instantiates the decode + combine kernels for head_dim_v = 512 (d_qk = 512 and 576, bf16 and fp16).
#include "mla_dispatch.cuh"

namespace mlabatch {
template void run_mla_decode_dv<512>(const MlaParams&, int, bool, cudaStream_t);
}  // namespace mlabatch
