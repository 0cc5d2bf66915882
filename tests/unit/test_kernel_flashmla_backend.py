"""The flashmla backend: FlashMLA's metadata is made once per metadata of ours, not on every call.

FlashMLA itself cannot run here (its package needs a Hopper GPU build), so a stand-in module follows its current
interface (flash_mla_interface.py): get_mla_metadata returns an empty FlashMLASchedMeta and None, and the first
flash_mla_with_kvcache call given that object fills it; the outputs come from our torch reference.
"""

from __future__ import annotations

import gc
from types import ModuleType

import pytest
import torch

from mlabatch.kernels import api, backends, flash_mla_with_kvcache, get_mla_metadata
from mlabatch.kernels.reference import mla_decode_reference

from kernel_oracle import make_case


class SchedMeta:
    """FlashMLA's FlashMLASchedMeta: empty until the first flash_mla_with_kvcache call that gets it."""

    have_initialized = False


class StandInFlashMLA(ModuleType):
    """flash_mla's two functions with FlashMLA's current signatures, counting metadata made and filled."""

    def __init__(self) -> None:
        super().__init__("flash_mla")
        self.made = 0
        self.filled = 0

    def get_mla_metadata(self, *args, **kwargs) -> tuple[SchedMeta, None]:
        self.made += 1
        return SchedMeta(), None

    def flash_mla_with_kvcache(self, q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata,
                               num_splits=None, softmax_scale=None, causal=False):
        assert isinstance(tile_scheduler_metadata, SchedMeta) and num_splits is None
        if not tile_scheduler_metadata.have_initialized:
            tile_scheduler_metadata.have_initialized = True
            self.filled += 1
        scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
        return mla_decode_reference(q, k_cache, block_table, cache_seqlens, head_dim_v, scale, causal)


@pytest.fixture
def fm(monkeypatch: pytest.MonkeyPatch) -> StandInFlashMLA:
    module = StandInFlashMLA()
    monkeypatch.setattr(backends, "flash_mla_module", lambda: (module, "stand-in"))
    monkeypatch.setattr(backends, "choose", lambda backend, device, dtype, dims: ("flashmla", "stand-in"))
    return module


def test_one_flashmla_metadata_per_decode_step(fm: StandInFlashMLA) -> None:
    case = make_case([70, 200, 5], 1, 16, 1, 576, torch.bfloat16, poison=False)
    args = (case.q, case.k_cache, case.block_table, case.cache_seqlens, 512)
    for step in range(2):
        meta, splits = get_mla_metadata(case.cache_seqlens, 16, 1)
        for _layer in range(3):
            out, lse = flash_mla_with_kvcache(*args, meta, splits, causal=True)
        assert (fm.made, fm.filled) == (step + 1, step + 1)
    ref_out, ref_lse = flash_mla_with_kvcache(*args, meta, splits, causal=True, backend="torch")
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def test_a_new_call_shape_gets_its_own_flashmla_metadata(fm: StandInFlashMLA) -> None:
    case = make_case([70, 200], 2, 16, 1, 576, torch.bfloat16, poison=False)
    meta, splits = get_mla_metadata(case.cache_seqlens, 32, 1)
    flash_mla_with_kvcache(case.q, case.k_cache, case.block_table, case.cache_seqlens, 512, meta, splits)
    flash_mla_with_kvcache(case.q[:, :1], case.k_cache, case.block_table, case.cache_seqlens, 512, meta, splits)
    assert fm.made == 2


def test_the_flashmla_metadata_goes_with_ours(fm: StandInFlashMLA) -> None:
    case = make_case([70], 1, 16, 1, 576, torch.bfloat16, poison=False)
    meta, splits = get_mla_metadata(case.cache_seqlens, 16, 1)
    flash_mla_with_kvcache(case.q, case.k_cache, case.block_table, case.cache_seqlens, 512, meta, splits)
    assert meta in api._FLASHMLA_METADATA
    before = len(api._FLASHMLA_METADATA)
    del meta
    gc.collect()
    assert len(api._FLASHMLA_METADATA) == before - 1
