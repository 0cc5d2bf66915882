"""The cuda backend against the torch reference on an H100: FlashMLA's grid and pass criterion, graphs, dims."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mlabatch.kernels import PAGE_SIZE, flash_mla_with_kvcache, get_mla_metadata
from mlabatch.kernels.build import load_extension
from mlabatch.kernels.scheduler import num_sm_parts, schedule
from mlabatch.kernels.validate import SUPPORTED_DIMS

from kernel_oracle import cos_diff, make_case, packed_schedule, same_nonfinite

pytestmark = pytest.mark.gpu


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if torch.cuda.get_device_capability() != (9, 0):
        return "needs a Hopper (sm_90) GPU"
    ext, why = load_extension()
    return None if ext is not None else f"CUDA extension unavailable: {why}"


_REASON = _skip_reason() if torch.cuda.is_available() else "needs a CUDA GPU"
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)


@pytest.fixture(autouse=True)
def nan_poisoned_allocator():
    """Fill the caching allocator's free memory with NaN so any unwritten output element shows."""
    junk = torch.full((512 << 20,), float("nan"), device="cuda", dtype=torch.float32)
    del junk
    yield


def _lens(b: int, s_k: int, varlen: bool, gen: torch.Generator) -> list[int]:
    if not varlen:
        return [s_k] * b
    return [max(int(torch.normal(float(s_k), s_k / 2, (1,), generator=gen)), 1) for _ in range(b)]


def _compare(case, d_v: int, causal: bool, hint: bool = True, metadata=None) -> None:
    s_q, h_q, h_kv, d_qk = case.q.shape[1], case.q.shape[2], case.k_cache.shape[2], case.q.shape[3]
    meta, splits = metadata or get_mla_metadata(case.cache_seqlens, s_q * h_q // h_kv, h_kv, head_dim_qk=d_qk if hint else 576)
    out, lse = flash_mla_with_kvcache(case.q, case.k_cache, case.block_table, case.cache_seqlens, d_v, meta, splits,
                                      causal=causal, backend="cuda")
    ref_out, ref_lse = flash_mla_with_kvcache(case.q, case.k_cache, case.block_table, case.cache_seqlens, d_v, meta,
                                              splits, causal=causal, backend="torch")
    torch.cuda.synchronize()
    assert out.dtype == case.q.dtype and lse.dtype == torch.float32
    assert same_nonfinite(out, ref_out) and same_nonfinite(lse, ref_lse)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert cos_diff(out, ref_out) < 1e-5, cos_diff(out, ref_out)
    assert cos_diff(lse, ref_lse) < 1e-5, cos_diff(lse, ref_lse)


GRID = list(itertools.product([1, 2, 6, 64], [1, 2, 4], [20, 140, 4096], [(16, 1), (128, 1), (8, 2), (3, 3)],
                              [False, True], [False, True]))


@pytest.mark.parametrize("b,s_q,s_k,heads,varlen,causal", GRID)
def test_grid_576_512_bf16(b, s_q, s_k, heads, varlen, causal):
    seed = hash((b, s_q, s_k, heads, varlen, causal)) % 2**31
    gen = torch.Generator().manual_seed(seed)
    case = make_case(_lens(b, s_k, varlen, gen), s_q, heads[0], heads[1], 576, torch.bfloat16, "cuda", seed=seed)
    _compare(case, 512, causal)


@pytest.mark.parametrize("d_qk,d_v", SUPPORTED_DIMS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
# (3, 2, 64, 900) and (2, 3, 64, 500): two and three 64-row tiles of a part reading the same pages. (300, 1, 32, 700):
# parts of several requests on the 64-row tile (with two buffer sets at d_qk <= 320).
@pytest.mark.parametrize("b,s_q,h_q,s_k", [(5, 1, 9, 1000), (3, 2, 12, 300), (2, 1, 64, 2000), (4, 4, 16, 70), (300, 1, 12, 700),
                                          (3, 2, 64, 900), (2, 3, 64, 500), (300, 1, 32, 700)])
@pytest.mark.parametrize("hint", [True, False], ids=["two-cta-schedule", "default-schedule"])
def test_all_dims(d_qk, d_v, dtype, b, s_q, h_q, s_k, hint):
    seed = d_qk + 1000 * d_v + s_k
    gen = torch.Generator().manual_seed(seed)
    case = make_case(_lens(b, s_k, True, gen), s_q, h_q, 1, d_qk, dtype, "cuda", seed=seed)
    _compare(case, d_v, causal=True, hint=hint)


# Steps of a request's page maxima, in log2 units of the softmax: below, at and far past the wgmma kernel's max slack
# (kMaxSlack = 8), and down, so the running max stays put with P up to 256 on some pages and moves on others.
MAX_STEPS = torch.tensor([-6.0, 0.0, 3.0, 7.9, 8.1, 12.0, 20.0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d_qk,d_v,h_q", [(576, 512, 128), (576, 512, 32), (576, 512, 16), (320, 256, 9)])
def test_page_maxima_far_and_near_past_the_running_max(dtype, d_qk, d_v, h_q):
    """Scores whose page maxima jump by random steps (and rise within each page), unlike the small random scores
    elsewhere, under which a row's running max settles on its first pages."""
    seed = d_qk + h_q
    gen = torch.Generator().manual_seed(seed)
    case = make_case(_lens(6, 1500, True, gen), 2, h_q, 1, d_qk, dtype, "cuda", seed=seed)
    q0 = 4.0
    case.q[..., 0] = q0
    per_unit = d_qk**0.5 / (q0 * math.log2(math.e))  # k[..., 0] per log2 unit of the score
    table = case.block_table.cpu()
    within = torch.arange(PAGE_SIZE) / PAGE_SIZE * 6.0  # a rise of 6 log2 units across a page
    for i, n in enumerate(case.cache_seqlens.tolist()):
        steps = MAX_STEPS[torch.randint(0, len(MAX_STEPS), ((n + PAGE_SIZE - 1) // PAGE_SIZE,), generator=gen)]
        for j, level in enumerate(torch.cumsum(steps, 0).tolist()):
            valid = min(PAGE_SIZE, n - PAGE_SIZE * j)  # the page's tail stays NaN
            case.k_cache[int(table[i, j]), :valid, :, 0] = ((level + within[:valid]) * per_unit)[:, None].to(case.k_cache)
    _compare(case, d_v, causal=True)
    _compare(case, d_v, causal=False)


@pytest.mark.parametrize("h_q", [16, 128])
def test_zero_length_and_empty_causal_rows(h_q):
    seed = 5
    case = make_case([0, 3000, 0, 2, 9000, 1], 4, h_q, 1, 576, torch.bfloat16, "cuda", seed=seed)
    _compare(case, 512, causal=True)
    _compare(case, 512, causal=False)


@pytest.mark.parametrize("b,h_q,d_qk", [(1, 16, 576), (37, 128, 576), (500, 12, 320), (3000, 16, 576), (64, 9, 128)])
def test_gpu_scheduler_is_flashmla_packing(b, h_q, d_qk):
    seed = b
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, 9000, (b,), generator=gen, dtype=torch.int32)
    lens[::7] = 0
    meta, splits = get_mla_metadata(lens.cuda(), h_q, 1, head_dim_qk=d_qk)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    ref_meta, ref_splits = packed_schedule(lens.tolist(), num_sm_parts(sms, h_q, 1, d_qk))
    assert torch.equal(meta.cpu(), ref_meta) and torch.equal(splits.cpu(), ref_splits)


def test_decode_on_the_equal_span_schedule():
    """The torch-side scheduler (used beyond the GPU scheduler's batch limit) also drives the cuda kernels. On its 5
    parts each part decodes several requests, empty and one-page ones among them, at 576/512 and on the 64-row tile's
    two buffer sets (320/256, 256/256)."""
    for h_q, d_qk, d_v in ((16, 576, 512), (128, 576, 512), (32, 320, 256), (64, 256, 256)):
        case = make_case([0, 3000, 64, 4097, 1, 700, 0, 130], 1, h_q, 1, d_qk, torch.bfloat16, "cuda", seed=h_q)
        _compare(case, d_v, causal=True, metadata=schedule(case.cache_seqlens, 5))


def test_cuda_graph_capture_and_replay():
    seed = 7
    gen = torch.Generator().manual_seed(seed)
    case = make_case(_lens(32, 1500, True, gen), 1, 16, 1, 576, torch.bfloat16, "cuda", extra_blocks=40, seed=seed)
    lens = case.cache_seqlens.clone()

    def step():
        meta, splits = get_mla_metadata(lens, 16, 1)
        return flash_mla_with_kvcache(case.q, case.k_cache, case.block_table, lens, 512, meta, splits, causal=True, backend="cuda")

    eager = step()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # warm-up on the capture stream
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_lse = step()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, eager[0]) and torch.equal(static_lse, eager[1])
    lens.sub_(torch.randint(0, 60, lens.shape, device="cuda", dtype=torch.int32)).clamp_(min=0)  # new step: new lengths
    graph.replay()
    fresh = step()
    torch.cuda.synchronize()
    assert torch.equal(static_out, fresh[0]) and torch.equal(static_lse, fresh[1])


def test_strided_q_and_noncontiguous_cache_heads():
    seed = 9
    case = make_case([700, 65], 2, 32, 2, 576, torch.bfloat16, "cuda", seed=seed)
    case.q = torch.cat([case.q, case.q], dim=-1)[..., :576]  # row stride 1152
    case.k_cache = case.k_cache[:, :, :1]  # one of two heads: head stride kept, h_kv = 1
    case.q = case.q[:, :, :16]
    _compare(case, 512, causal=True)
