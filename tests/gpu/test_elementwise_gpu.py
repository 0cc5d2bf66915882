"""The fused Triton ops (RoPE in place, SwiGLU) on a GPU agree with their float32 definitions."""
import pytest
import torch
import torch.nn.functional as F

from mlabatch.kernels import elementwise
from mlabatch.models.rope import rope_tables

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_triton_is_what_runs_on_cuda():
    assert elementwise.triton is not None, "triton is not importable: the CUDA path would be plain torch"


@pytest.mark.parametrize("groups, chunks, gap", [(33, 1, 64), (10, 3, 0), (9, 1, 0)])
def test_rope_in_place_on_a_strided_view(groups, chunks, gap):
    torch.manual_seed(0)
    hd, lead, width = 64, 40, gap + chunks * 64
    buffer = torch.randn(3, 7, lead + groups * width + 24, device="cuda", dtype=torch.bfloat16)
    before = buffer.clone()
    x = buffer[..., lead: lead + groups * width].unflatten(-1, (groups, width))[..., gap:].unflatten(-1, (chunks, hd))
    pos = torch.randint(0, 8000, (3, 7), device="cuda")
    inv_freq = 1.0 / 500000 ** (torch.arange(0, hd, 2, device="cuda", dtype=torch.float32) / hd)
    ref = x.float()
    emb = torch.cat([pos[..., None].float() * inv_freq] * 2, dim=-1)[..., None, None, :]
    expected = ref * emb.cos() + torch.cat((-ref[..., hd // 2:], ref[..., : hd // 2]), -1) * emb.sin()
    elementwise.rope_(x, *rope_tables(pos, inv_freq, dtype=torch.bfloat16))
    assert torch.allclose(x.float(), expected, atol=0.03, rtol=0.02)
    x.copy_(before[..., lead: lead + groups * width].unflatten(-1, (groups, width))[..., gap:].unflatten(-1, (chunks, hd)))
    assert torch.equal(buffer, before)  # nothing outside the rotated chunks changed


@pytest.mark.parametrize("inner", [8192, 1536, 1000])
def test_swiglu(inner):
    torch.manual_seed(0)
    gate_up = torch.randn(5, 37, 2 * inner, device="cuda", dtype=torch.bfloat16) * 3
    g, u = gate_up.float().chunk(2, dim=-1)
    out = elementwise.swiglu(gate_up)
    assert out.shape == (5, 37, inner) and out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), F.silu(g) * u, atol=0.03, rtol=0.01)
