// Instantiates the decode + combine kernels for head_dim_v = 384 (d_qk = 384 and 448, bf16 and fp16).
#include "mla_dispatch.cuh"

namespace mlabatch {
template void run_mla_decode_dv<384>(const MlaParams&, int, bool, cudaStream_t);
}  // namespace mlabatch
