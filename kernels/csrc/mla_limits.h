// The kernel limits owned by kernels/limits.py, which kernels/build.py passes as -DMLA_<NAME>=value defines;
// a build without them stops here. Sources use the typed constants below and static_assert what they hard-wire.
#pragma once

#ifndef MLA_PAGE_SIZE
#error "MLA_PAGE_SIZE must be defined by kernels/build.py"
#endif
#ifndef MLA_D_ROPE
#error "MLA_D_ROPE must be defined by kernels/build.py"
#endif
#ifndef MLA_METADATA_SIZE
#error "MLA_METADATA_SIZE must be defined by kernels/build.py"
#endif
#ifndef MLA_FIXED_OVERHEAD
#error "MLA_FIXED_OVERHEAD must be defined by kernels/build.py"
#endif
#ifndef MLA_Q_TILE_ROWS
#error "MLA_Q_TILE_ROWS must be defined by kernels/build.py"
#endif
#ifndef MLA_TWO_CTA_MAX_ROWS
#error "MLA_TWO_CTA_MAX_ROWS must be defined by kernels/build.py"
#endif
#ifndef MLA_TWO_CTA_MAX_D_QK
#error "MLA_TWO_CTA_MAX_D_QK must be defined by kernels/build.py"
#endif
#ifndef MLA_GPU_SCHED_MAX_BATCH
#error "MLA_GPU_SCHED_MAX_BATCH must be defined by kernels/build.py"
#endif

namespace mlabatch {

constexpr int kPage = MLA_PAGE_SIZE;                        // tokens per KV-cache page
constexpr int kDRope = MLA_D_ROPE;                          // d_qk is d_v or d_v + kDRope
constexpr int kMetadataSize = MLA_METADATA_SIZE;            // int32 fields per scheduler part
constexpr int kFixedOverhead = MLA_FIXED_OVERHEAD;          // scheduler cost per sequence, in pages
constexpr int kQTileRows = MLA_Q_TILE_ROWS;                 // largest query-row tile
constexpr int kTwoCtaMaxRows = MLA_TWO_CTA_MAX_ROWS;        // tiles this small with d_qk <= kTwoCtaMaxDqk
constexpr int kTwoCtaMaxDqk = MLA_TWO_CTA_MAX_D_QK;         // run two CTAs per SM
constexpr int kGpuSchedMaxBatch = MLA_GPU_SCHED_MAX_BATCH;  // sequences the one-block GPU scheduler holds

}  // namespace mlabatch
