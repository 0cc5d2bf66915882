"""RoRoPE, the exact rotation that packs keys' RoPE energy into a few dims (TransMLA).

At each frequency, RoPE turns every KV head's 2-d pair by the same angle, so any orthogonal mix of the
heads' pairs at that frequency commutes with RoPE. Mixing by the principal axes of the keys puts most
positional energy in the first mixes, which stay RoPE'd; the rest lose RoPE and join the low-rank
latent. The RoPE slots need not keep one mix per frequency: a slot may carry any frequency (the
converted model stores each slot's), so slots of slow frequencies, which barely turn over the context,
go to further mixes of fast ones (`rope_slots`). The RoPE'd part is `rope_heads` blocks of `unit` dims
(unit/2 slots each): whole heads (unit = head_dim), or one block narrower than a head (d_rope = 64 for
head_dim 128, DeepSeek's 512+64 shape), which keeps only the unit/2 most valuable slots.
"""
from __future__ import annotations

import torch

from mlabatch.models.conversion.linalg import eigh_descending


def rorope_mixes(w_k: torch.Tensor, second_moment: torch.Tensor, n_kv: int,
                 head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Principal mixes of the KV heads' key pairs per frequency: energies [hd/2, n_kv], mixes [hd/2, n_kv, n_kv].

    Column j of mixes[i] is the j-th mix (energy falling) at frequency i; `second_moment` is E[x x^T] of
    the attention input (the identity for weight-only methods).
    """
    w = w_k.double()
    cov = w @ second_moment.double() @ w.T  # key second moment [n_kv*hd, n_kv*hd]
    half = head_dim // 2
    heads = torch.arange(n_kv) * head_dim
    energies, mixes = [], []
    for i in range(half):
        c = cov[(heads + i)[:, None], (heads + i)[None, :]] + cov[(heads + i + half)[:, None], (heads + i + half)[None, :]]
        vals, vecs = eigh_descending(c)
        energies.append(vals)
        mixes.append(vecs)
    return torch.stack(energies), torch.stack(mixes)


def rope_slots(energies: list[torch.Tensor], inv_freq: torch.Tensor, rope_heads: int, length: int,
               n_slots: int) -> list[int]:
    """Frequency index of each of the n_slots (unit/2) RoPE slots, shared by all layers; a fast frequency may
    take several.

    Dropping RoPE from a key mix of energy e at frequency theta costs about e * E[1 - cos(theta * delta)]
    in score error, delta uniform over the causal pairs of `length` tokens: slow frequencies barely turn
    in that span, so their slots serve further mixes of fast ones. A slot holds `rope_heads` mixes (one
    per RoPE head); picking greedily is optimal because each frequency's energies fall.
    """
    query, key = torch.tril_indices(length, length)
    delta = (query - key).double()
    turn = 1 - torch.cos(delta[:, None] * inv_freq.double()[None]).mean(0)  # [hd/2]
    total = torch.stack(energies).sum(0)  # [hd/2, n_kv], all layers
    half, n_kv = total.shape
    per_slot = n_kv // rope_heads  # slots a frequency can take
    gain = total[:, :per_slot * rope_heads].reshape(half, per_slot, rope_heads).sum(-1) * turn[:, None]
    taken = [0] * half
    for _ in range(n_slots):
        best = max((f for f in range(half) if taken[f] < per_slot), key=lambda f: gain[f, taken[f]].item())
        taken[best] += 1
    return [f for f in range(half) for _ in range(taken[f])]


def rorope_rotation(mixes: torch.Tensor, slots: list[int], rope_heads: int, head_dim: int) -> torch.Tensor:
    """Orthogonal R [n_kv*hd]^2 (float64): rows of R @ k are first the RoPE'd mixes, then the others.

    With unit = 2 * len(slots), row r*unit + a (and + unit/2) is RoPE block r's slot a: the next unused mix
    at frequency slots[a]. Any orthogonal mix of one frequency's pairs commutes with RoPE, so the RoPE'd
    rows stay exact.
    """
    half, n_kv = mixes.shape[0], mixes.shape[1]
    unit = 2 * len(slots)
    heads = torch.arange(n_kv) * head_dim

    def row(f: int, j: int, part: int) -> torch.Tensor:
        out = torch.zeros(n_kv * head_dim, dtype=torch.float64)
        out[heads + f + part * half] = mixes[f][:, j]
        return out

    used = [0] * half
    rope = [[None] * unit for _ in range(rope_heads)]
    for a, f in enumerate(slots):
        for r in range(rope_heads):
            rope[r][a], rope[r][a + unit // 2] = row(f, used[f] + r, 0), row(f, used[f] + r, 1)
        used[f] += rope_heads
    rest = [row(f, j, part) for f in range(half) for j in range(used[f], n_kv) for part in (0, 1)]
    return torch.stack([x for head in rope for x in head] + rest)
