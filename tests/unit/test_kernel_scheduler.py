"""Split-KV scheduler metadata: every block of every sequence decoded exactly once, splits match num_splits."""

from __future__ import annotations

import pytest
import torch

from mlabatch.kernels import get_mla_metadata
from mlabatch.kernels.scheduler import num_sm_parts, schedule

from kernel_oracle import packed_schedule


def pieces(meta: torch.Tensor, lens: torch.Tensor) -> list[tuple[int, int, int, int, int]]:
    """Expand metadata into (part, request, split index, first block, end block) like the kernel does."""
    nb = ((lens + 63) // 64).tolist()
    out = []
    for p, (br, bb, er, eb, bs, *_rest) in enumerate(meta.tolist()):
        for r in range(br, er + 1):
            first = bb if r == br else 0
            end = eb if r == er else nb[r]
            out.append((p, r, bs if r == br else 0, first, end))
    return out


SCHEDULERS = {"equal-spans": schedule, "packed (the GPU's)": lambda lens, parts: packed_schedule(lens.tolist(), parts)}


@pytest.mark.parametrize("scheduler", SCHEDULERS.values(), ids=SCHEDULERS.keys())
@pytest.mark.parametrize("parts", [1, 2, 7, 33, 132])
@pytest.mark.parametrize("seed", range(4))
def test_every_block_exactly_once(scheduler, parts, seed):
    gen = torch.Generator().manual_seed(seed)
    b = int(torch.randint(1, 40, (1,), generator=gen))
    lens = torch.randint(0, 3000, (b,), generator=gen, dtype=torch.int32)
    lens[torch.rand(b, generator=gen) < 0.2] = 0
    meta, splits = scheduler(lens, parts)
    assert meta.shape == (parts, 8) and meta.dtype == torch.int32
    assert splits.shape == (b + 1,) and splits.dtype == torch.int32
    covered = {r: [] for r in range(b)}
    per_req = {r: [] for r in range(b)}
    for p, r, split, first, end in pieces(meta, lens):
        assert 0 <= first <= end <= (int(lens[r]) + 63) // 64
        if lens[r] > 0:
            assert end > first, "a non-empty sequence never gets an empty piece"
        covered[r].extend(range(first, end))
        per_req[r].append((p, split))
    for r in range(b):
        n_blocks = (int(lens[r]) + 63) // 64
        assert sorted(covered[r]) == list(range(n_blocks)), f"request {r} blocks not covered exactly once"
        n = int(splits[r + 1] - splits[r])
        assert len(per_req[r]) == n >= 1
        assert [s for _, s in per_req[r]] == list(range(n)), "split indices count 0..n-1 in part order"
    assert splits[0] == 0 and int(splits[-1]) <= b + parts


def test_balanced_parts_and_long_sequence_split():
    lens = torch.tensor([64 * 1000] + [64] * 10, dtype=torch.int32)
    meta, splits = schedule(lens, 8)
    work = [end - first for _, _, _, first, end in pieces(meta, lens)]
    assert sum(work) == 1010 and int(splits[1] - splits[0]) >= 7  # the long one spans most parts
    per_part = {}
    for p, _, _, first, end in pieces(meta, lens):
        per_part[p] = per_part.get(p, 0) + end - first
    assert max(per_part.values()) <= -(-(1010 + 11 * 5) // 8)


@pytest.mark.parametrize("b,length,parts", [(128, 4096, 66), (128, 4096, 132), (256, 1024, 132), (7, 100, 3)])
def test_packing_splits_nothing_when_same_length_requests_fit(b, length, parts):
    """FlashMLA's packing gives whole requests to parts when they divide evenly enough (the combine step idles)."""
    meta, splits = packed_schedule([length] * b, parts)
    assert splits.tolist() == list(range(b + 1))
    assert all(end_blk == (length + 63) // 64 for end_blk in meta[:, 3].tolist() if end_blk)


def test_num_sm_parts_formula():
    assert num_sm_parts(132, 16, 1) == 132
    assert num_sm_parts(132, 64, 1) == 132
    assert num_sm_parts(132, 128, 1) == 66
    assert num_sm_parts(132, 256, 1) == 33
    assert num_sm_parts(132, 12, 4) == 33
    assert num_sm_parts(4, 512, 8) == 1
    assert num_sm_parts(132, 9, 1, head_dim_qk=320) == 264  # narrow heads: two CTAs per SM
    assert num_sm_parts(132, 16, 1, head_dim_qk=576) == 132
    assert num_sm_parts(132, 32, 1, head_dim_qk=320) == 132


def test_get_mla_metadata_matches_schedule_and_validates():
    lens = torch.tensor([5, 0, 4096, 130], dtype=torch.int32)
    meta, splits = get_mla_metadata(lens, 16, 1)
    ref_meta, ref_splits = schedule(lens, 132)
    assert torch.equal(meta, ref_meta) and torch.equal(splits, ref_splits)
    with pytest.raises(ValueError, match="int32"):
        get_mla_metadata(lens.long(), 16, 1)
