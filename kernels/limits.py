"""The one owner of the MLA decode kernel's limits: Python imports them from here, CUDA gets them from the build.

kernels/build.py passes each value to nvcc and the C++ compiler as a `-DMLA_<NAME>=value` define (the
SUPPORTED_D_V list to the C++ compiler only: nvcc splits -D values at commas), and the sources stop with
#error if one is missing, so no number here is repeated in the CUDA sources. They static_assert what they
hard-wire (e.g. wgmma's 64-row tiles), and each d_v needs its csrc/mla_decode_dv<d_v>.cu instantiation, so
a value the kernels cannot run fails the build. No imports: setup.py loads build.py, so this file, by path.
"""

PAGE_SIZE = 64  # tokens per KV-cache page: k_cache [num_blocks, PAGE_SIZE, h_kv, d_qk]
SUPPORTED_D_V = (128, 192, 256, 384, 512)  # head_dim_v values with a compiled kernel (csrc/mla_decode_dv<d_v>.cu)
D_ROPE = 64  # the kernel's RoPE width: d_qk is d_v, or d_v + D_ROPE
SUPPORTED_D_ROPE = (0, D_ROPE)
METADATA_SIZE = 8  # int32 fields per scheduler part: begin_req, begin_blk, end_req, end_blk, begin_split, zeros
FIXED_OVERHEAD = 5  # blocks' worth of cost the scheduler charges per sequence (Q load, epilogue)
Q_TILE_ROWS = 64  # the decode kernels' largest query-row tile
TWO_CTA_MAX_ROWS = 16  # tiles of at most this many query rows, with d_qk at most TWO_CTA_MAX_D_QK,
TWO_CTA_MAX_D_QK = 384  # run 2 CTAs per SM, so the scheduler makes twice the parts for them
GPU_SCHED_MAX_BATCH = 8192  # the one-block GPU scheduler keeps per-sequence state in shared memory
