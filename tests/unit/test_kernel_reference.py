"""The torch reference of MLA decode against a plain per-sequence float64 attention, on poisoned paged inputs."""

from __future__ import annotations

import itertools

import pytest
import torch

from mlabatch.kernels import flash_mla_with_kvcache, get_mla_metadata, info
from mlabatch.kernels.validate import SUPPORTED_DIMS

from kernel_oracle import cos_diff, make_case, plain_attention, same_nonfinite


def _lens(b: int, s_k: int, varlen: bool, gen: torch.Generator) -> list[int]:
    """FlashMLA-style lengths: all s_k, or normal around s_k (sd s_k/2), clamped to >= 1."""
    if not varlen:
        return [s_k] * b
    return [max(int(torch.normal(float(s_k), s_k / 2, (1,), generator=gen)), 1) for _ in range(b)]


def _run(case, d_v: int, causal: bool, backend: str = "torch", scale: float | None = None):
    s_q, h_q = case.q.shape[1], case.q.shape[2]
    h_kv = case.k_cache.shape[2]
    meta, splits = get_mla_metadata(case.cache_seqlens, s_q * h_q // h_kv, h_kv)
    return flash_mla_with_kvcache(
        case.q, case.k_cache, case.block_table, case.cache_seqlens, d_v, meta, splits,
        softmax_scale=scale, causal=causal, backend=backend,
    )


def _check(case, d_v: int, causal: bool, tol: float = 1e-5) -> None:
    out, lse = _run(case, d_v, causal)
    ref_out, ref_lse = plain_attention(case, d_v, case.q.shape[-1] ** -0.5, causal)
    assert out.dtype == case.q.dtype and lse.dtype == torch.float32
    assert out.shape == ref_out.shape and lse.shape == ref_lse.shape
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    assert same_nonfinite(lse, ref_lse.float())
    if case.q.dtype == torch.float32:
        torch.testing.assert_close(out.double(), ref_out, atol=tol, rtol=tol)
        finite = torch.isfinite(ref_lse)
        torch.testing.assert_close(lse.double()[finite], ref_lse[finite], atol=tol, rtol=tol)
    else:
        assert cos_diff(out, ref_out) < 1e-5
        assert cos_diff(lse, ref_lse) < 1e-5


# b x s_q x s_k x (h_q, h_kv) x varlen x causal, FlashMLA's grid shrunk to CPU size.
GRID = list(itertools.product([1, 3], [1, 2, 4], [20, 140], [(1, 1), (16, 1), (6, 3), (8, 2)], [False, True], [False, True]))


@pytest.mark.parametrize("b,s_q,s_k,heads,varlen,causal", GRID)
def test_grid_576_512(b, s_q, s_k, heads, varlen, causal):
    seed = hash((b, s_q, s_k, heads, varlen, causal)) % 2**31
    gen = torch.Generator().manual_seed(seed)
    case = make_case(_lens(b, s_k, varlen, gen), s_q, heads[0], heads[1], 576, seed=seed)
    _check(case, 512, causal)


@pytest.mark.parametrize("d_qk,d_v", SUPPORTED_DIMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_dims_and_dtypes(d_qk, d_v, dtype):
    seed = d_qk * 7 + d_v
    case = make_case([65, 1, 130], 2, 4, 2, d_qk, dtype=dtype, seed=seed)
    _check(case, d_v, causal=True)


def test_zero_length_sequences_give_zero_and_inf():
    seed = 1
    case = make_case([0, 77, 0, 3], 2, 8, 1, 576, seed=seed)
    out, lse = _run(case, 512, causal=False)
    assert torch.all(out[[0, 2]] == 0) and torch.all(lse[[0, 2]] == float("inf"))
    assert torch.isfinite(lse[[1, 3]]).all() and out[1].abs().sum() > 0
    _check(case, 512, causal=True)


def test_causal_query_with_no_visible_key_is_empty():
    seed = 2
    case = make_case([2], 4, 2, 1, 192, seed=seed)  # queries 0 and 1 see nothing under causality
    out, lse = _run(case, 128, causal=True)
    assert torch.all(lse[0, :, :2] == float("inf")) and torch.all(out[0, :2] == 0)
    assert torch.isfinite(lse[0, :, 2:]).all()
    _check(case, 128, causal=True)


def test_softmax_scale_is_used():
    seed = 3
    case = make_case([100], 1, 2, 1, 320, seed=seed)
    out1, lse1 = _run(case, 256, False, scale=0.5)
    out2, lse2 = _run(case, 256, False, scale=0.05)
    assert not torch.allclose(lse1, lse2)
    q2 = case.q * 10
    case.q = q2
    out3, lse3 = _run(case, 256, False, scale=0.05)
    torch.testing.assert_close(out1, out3, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(d_qk=576, d_v=448), ValueError, "supported: d_v in"),
        (dict(d_qk=600, d_v=512), ValueError, "supported: d_v in"),
        (dict(h_q=3, h_kv=2), ValueError, "h_q % h_kv"),
        (dict(dtype=torch.float64), TypeError, "bfloat16, float16, float32"),
    ],
)
def test_validation_names_supported_set(kwargs, err, match):
    d_qk, d_v = kwargs.get("d_qk", 576), kwargs.get("d_v", 512)
    case = make_case([10], 1, kwargs.get("h_q", 2), kwargs.get("h_kv", 1), d_qk, dtype=kwargs.get("dtype", torch.float32))
    with pytest.raises(err, match=match):
        _run(case, d_v, False)


def test_validation_page_size_and_index_dtype():
    case = make_case([10], 1, 2, 1, 576)
    meta, splits = get_mla_metadata(case.cache_seqlens, 2, 1)
    with pytest.raises(ValueError, match="page size must be 64"):
        flash_mla_with_kvcache(case.q, case.k_cache[:, :32], case.block_table, case.cache_seqlens, 512, meta, splits)
    with pytest.raises(TypeError, match="int32"):
        flash_mla_with_kvcache(case.q, case.k_cache, case.block_table.long(), case.cache_seqlens, 512, meta, splits)
    with pytest.raises(ValueError, match=r"num_splits must be \[b\+1=2\]"):
        flash_mla_with_kvcache(case.q, case.k_cache, case.block_table, case.cache_seqlens, 512, meta, splits[:1])


def test_backend_selection(monkeypatch):
    case = make_case([10], 1, 2, 1, 576)
    with pytest.raises(ValueError, match="unknown MLA backend"):
        _run(case, 512, False, backend="triton")
    with pytest.raises(RuntimeError, match="'cuda' forced but unusable"):
        _run(case, 512, False, backend="cuda")
    monkeypatch.setenv("MLABATCH_MLA_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="needs a GPU"):
        _run(case, 512, False, backend=None)
    monkeypatch.setenv("MLABATCH_MLA_BACKEND", "torch")
    assert info()["backend"] == "torch" and info()["reason"] == "forced"
    monkeypatch.delenv("MLABATCH_MLA_BACKEND")
    if not torch.cuda.is_available():
        assert info()["backend"] == "torch" and "fallback" in info()["reason"]
