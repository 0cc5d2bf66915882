"""Fused elementwise ops of the decoder's hot path: one Triton kernel each on CUDA, plain torch elsewhere.

At batch 256 a decode step is short enough that every extra launch shows, and in prefill the unfused
forms re-read large activations: rotate-half RoPE in torch is a roll (plus a copy of a strided input),
a multiply and an addcmul; SwiGLU is a silu over a strided half of the gate/up output and a multiply.
Both compute in float32 and round once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # Triton ships with CUDA builds of torch; CPU-only installs take the torch path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None


def _use_triton(x: torch.Tensor) -> bool:
    return triton is not None and x.is_cuda


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., groups, chunks, head_dim] in place (rotate-half RoPE per head_dim chunk) and return it.

    `cos` and `sin` [..., 1, head_dim] (x's leading dims) broadcast over groups and chunks; `sin` has its
    first half negated, so `x * cos + roll(x, head_dim / 2) * sin` is the rotation. x may be a strided
    view: groups any stride apart, each group's chunks contiguous (slices of a fused projection output).
    """
    if not _use_triton(x):
        return torch.addcmul(x * cos.unsqueeze(-2), x.roll(x.shape[-1] // 2, -1), sin.unsqueeze(-2), out=x)
    groups, chunks, head_dim = x.shape[-3:]
    if x.stride(-1) != 1 or x.stride(-2) != head_dim:
        raise ValueError("rope_ on CUDA needs each group's chunks contiguous")
    rows = x.view(-1, groups, chunks, head_dim)  # fails loudly if rows are not one stride apart
    lead = x.shape[:-3]
    cos = cos.expand(*lead, 1, head_dim).reshape(-1, head_dim)
    sin = sin.expand(*lead, 1, head_dim).reshape(-1, head_dim)
    _rope_kernel[(rows.shape[0],)](rows, cos, sin, rows.stride(0), rows.stride(1), cos.stride(0), groups * chunks,
                                    chunks, HALF=head_dim // 2, BLOCK_H=triton.next_power_of_2(groups * chunks))
    return x


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of gate_up [..., 2 * inner] (gate first) -> [..., inner]."""
    gate, up = gate_up.chunk(2, dim=-1)
    if not _use_triton(gate_up):
        return F.silu(gate) * up
    inner = gate.shape[-1]
    rows = gate_up.reshape(-1, 2 * inner)
    out = gate_up.new_empty(*gate_up.shape[:-1], inner)
    block = 1024
    _swiglu_kernel[(rows.shape[0], triton.cdiv(inner, block))](rows, out, inner, rows.stride(0), BLOCK=block)
    return out


if triton is not None:

    @triton.jit
    def _rope_kernel(x_ptr, cos_ptr, sin_ptr, row_stride, group_stride, table_stride, heads, chunks,
                     HALF: tl.constexpr, BLOCK_H: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        h = tl.arange(0, BLOCK_H)[:, None]
        d = tl.arange(0, HALF)[None, :]
        mask = h < heads
        first = x_ptr + row * row_stride + (h // chunks) * group_stride + (h % chunks) * (2 * HALF) + d
        x1 = tl.load(first, mask=mask).to(tl.float32)
        x2 = tl.load(first + HALF, mask=mask).to(tl.float32)
        table = row * table_stride + d
        c1 = tl.load(cos_ptr + table).to(tl.float32)
        c2 = tl.load(cos_ptr + table + HALF).to(tl.float32)
        s1 = tl.load(sin_ptr + table).to(tl.float32)
        s2 = tl.load(sin_ptr + table + HALF).to(tl.float32)
        out_type = x_ptr.dtype.element_ty
        tl.store(first, (x1 * c1 + x2 * s1).to(out_type), mask=mask)
        tl.store(first + HALF, (x2 * c2 + x1 * s2).to(out_type), mask=mask)

    @triton.jit
    def _swiglu_kernel(in_ptr, out_ptr, inner, row_stride, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = col < inner
        gate = tl.load(in_ptr + row * row_stride + col, mask=mask).to(tl.float32)
        up = tl.load(in_ptr + row * row_stride + inner + col, mask=mask).to(tl.float32)
        out = gate * tl.sigmoid(gate) * up
        tl.store(out_ptr + row * inner + col, out.to(out_ptr.dtype.element_ty), mask=mask)
