"""The batched sampler: greedy, temperature, top-k, top-p, reproducible per-row seeds (settings: config.SamplingParams).

Random draws use the Gumbel-max trick with noise from a counter-based hash of (seed, step, token id),
so a row's tokens depend only on its prompt, its settings and its seed: not on the batch it shares,
the order rows finish in, a preemption, a retried Spark task, or the device.
"""
from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finalizer on int64 tensors holding values < 2**32 (low bits of products are exact)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def gumbel_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise [b, vocab] float32, a pure function of (seed, step, token id) per row."""
    row = _mix32(_mix32(seeds.long() & _MASK32) ^ (steps.long() & _MASK32))
    h = _mix32(row[:, None] ^ torch.arange(vocab, device=seeds.device))
    u = ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))
    return -torch.log(-torch.log(u))


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
           seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Next tokens [b] from logits [b, vocab]; rows with temperature 0 take the argmax.

    temperature/top_p float32 [b], top_k/seeds/steps long [b] (top_k 0 = off, steps = tokens generated so far).
    """
    greedy = logits.argmax(-1)
    logits = logits.float()
    scaled = logits / temperature.clamp(min=1e-6)[:, None]
    sorted_logits, order = scaled.sort(-1, descending=True)
    rank = torch.arange(logits.shape[-1], device=logits.device)[None]
    cut = (top_k[:, None] > 0) & (rank >= top_k[:, None])
    probs = sorted_logits.softmax(-1)
    cut |= (probs.cumsum(-1) - probs) > top_p[:, None]  # keep the smallest prefix reaching top_p
    sorted_logits = sorted_logits.masked_fill(cut, float("-inf"))
    filtered = torch.empty_like(scaled).scatter_(-1, order, sorted_logits)
    drawn = (filtered + gumbel_noise(seeds, steps, logits.shape[-1])).argmax(-1)
    return torch.where(temperature == 0, greedy, drawn)
