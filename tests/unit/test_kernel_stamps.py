"""benchmarks/kernel_stamps.py: the per-pair medians read back from a stamp buffer, on stamps with a known timeline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kernel_stamps", ROOT / "benchmarks" / "kernel_stamps.py")
kernel_stamps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_stamps)

N0, N1 = len(kernel_stamps.STAMP_POINTS[0]), len(kernel_stamps.STAMP_POINTS[1])


def stamp_buffer(ctas: int, slots: range, pair: int = 6000) -> torch.Tensor:
    """Consecutive pairs of `pair` cycles in every CTA: warpgroup 0 stamps every 400 cycles from 300 after the pair's
    start, warpgroup 1 every 450 from 500 after it."""
    buf = torch.zeros(ctas * kernel_stamps.ENTRIES_PER_CTA, dtype=torch.int64)
    st = buf.view(ctas, 2, kernel_stamps.STAMP_SLOTS, -1)
    for c in range(ctas):
        for s in slots:
            start = 100_000 + s * pair + 7 * c
            st[c, 0, s, :N0] = torch.arange(N0) * 400 + start + 300
            st[c, 1, s, :N1] = torch.arange(N1) * 450 + start + 500
    return buf


def test_medians_of_a_known_timeline() -> None:
    r = kernel_stamps.timeline(stamp_buffer(3, range(5, 21)))
    # every slot but the first of each CTA has its predecessor: 15 pairs per CTA
    assert r["pairs"] == 45
    assert r["pair_cycles"] == r["pair_cycles_mean"] == 6000
    # from the previous pair's warpgroup 0 S done (300 + 400 * (N0 - 1) - 6000 before this pair's start)
    prev_done = 300 + 400 * (N0 - 1) - 6000
    assert list(r["wg0"].values()) == [300 + 400 * k - prev_done for k in range(N0)]
    assert list(r["wg1"].values()) == [500 + 450 * k - prev_done for k in range(N1)]


def test_a_slot_whose_warpgroups_come_from_different_pairs_is_left_out() -> None:
    buf = stamp_buffer(1, range(5, 21))
    st = buf.view(1, 2, kernel_stamps.STAMP_SLOTS, -1)
    st[0, 1, 10, :N1] += 500_000  # warpgroup 1's record of slot 10 is a later request's pair
    r = kernel_stamps.timeline(buf)
    assert r["pairs"] == 15 - 2  # slot 10, and slot 11 whose predecessor is slot 10
    assert r["pair_cycles"] == 6000


def test_an_empty_buffer_has_no_pairs() -> None:
    assert kernel_stamps.timeline(torch.zeros(kernel_stamps.ENTRIES_PER_CTA, dtype=torch.int64)) == {"pairs": 0}
