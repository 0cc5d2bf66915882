"""Runs the decoder over the paged cache: packed prefill of admitted sequences, decode steps (replayed from
CUDA graphs on GPU) with each step's inputs built on the host and uploaded asynchronously, and sampling."""
from __future__ import annotations

import numpy as np
import torch

from mlabatch.models.generation.block_manager import BLOCK, BlockManager, blocks_for
from mlabatch.models.generation.cuda_graphs import DecodeGraphs
from mlabatch.models.generation.sampling import sample
from mlabatch.models.generation.scheduler import DecodePlan
from mlabatch.models.generation.sequence import Sequence
from mlabatch.models.mla_decoder import DecodeInputs, MLADecoder


def _pinned(t: torch.Tensor) -> torch.Tensor:
    """Page-locked copy of a host tensor (so its upload is asynchronous), where CUDA is present."""
    return t.pin_memory() if torch.cuda.is_available() else t


def _upload(t: np.ndarray, device: torch.device) -> torch.Tensor:
    return _pinned(torch.from_numpy(t)).to(device, non_blocking=True)


class ModelRunner:
    """The model, its cache tensor and its CUDA graphs; keeps the last step's block table to update it in place."""

    def __init__(self, model: MLADecoder, kv: torch.Tensor, max_batch: int, max_context: int, scratch_block: int,
                 cuda_graphs: bool) -> None:
        self.model, self.kv, self.device = model, kv, kv.device
        self.table_width = blocks_for(max_context)
        self.graphs = None
        if cuda_graphs and self.device.type == "cuda":
            self.graphs = DecodeGraphs(model, kv, max_batch, self.table_width, scratch_block)
            self.graphs.capture()
        self.graph_steps = 0
        self._rows: list[Sequence] = []
        self._row_of: dict[int, int] = {}
        self._table = np.zeros((0, self.table_width), dtype=np.int32)

    def prefill(self, seqs: list[Sequence]) -> torch.Tensor:
        """Prefill admitted sequences (their pages already reserved) in one packed pass; last-token logits [k, vocab]."""
        prompts = [s.prefill_ids() for s in seqs]
        slots = [BlockManager.slots(s, 0, len(p)) for s, p in zip(seqs, prompts)]
        blocks = torch.from_numpy(np.concatenate([b for b, _ in slots]))
        offsets = torch.from_numpy(np.concatenate([o for _, o in slots]))
        return self.model.prefill(prompts, self.kv, (blocks, offsets))

    def decode(self, plan: DecodePlan, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queue one decode step of `plan.rows` (input `tokens` [b] on the device): (logits [b, vocab], argmax [b])."""
        rows = plan.rows
        table = self._block_table(plan)
        seqlens = np.array([s.cached for s in rows], dtype=np.int64)
        positions = seqlens - 1
        step = _upload(np.stack([positions, table[np.arange(len(rows)), positions // BLOCK], positions % BLOCK,
                                 seqlens]), self.device)
        block_table = _upload(table, self.device)
        if self.graphs is not None and self.graphs.fits(len(rows)):
            self.graph_steps += 1
            return self.graphs.run(tokens, DecodeInputs(step[0], step[1], step[2], step[3].int(), block_table))
        width = max(len(s.blocks) for s in rows)
        inputs = DecodeInputs(step[0], step[1], step[2], step[3].int(), block_table[:, :width])
        logits = self.model.decode_batch(tokens, inputs, self.kv)
        return logits, logits.argmax(-1)

    def _block_table(self, plan: DecodePlan) -> np.ndarray:
        """int32 [b, table_width] page ids of the plan's rows: last step's table plus new pages, rebuilt when rows change."""
        if plan.rows != self._rows:  # identity comparison (Sequence has eq=False)
            self._rows, self._row_of = plan.rows, {id(s): r for r, s in enumerate(plan.rows)}
            self._table = np.zeros((len(plan.rows), self.table_width), dtype=np.int32)
            for r, s in enumerate(plan.rows):
                self._table[r, : len(s.blocks)] = s.blocks
            return self._table
        for s in plan.grown:
            self._table[self._row_of[id(s)], len(s.blocks) - 1] = s.blocks[-1]
        return self._table

    def sample(self, logits: torch.Tensor, rows: list[Sequence], lag: int) -> torch.Tensor:
        """Next tokens [b] on the device; `lag` tokens of each row are still in flight (count toward its step)."""
        if all(s.params.greedy for s in rows):
            return logits.argmax(-1)
        floats = _pinned(torch.tensor([[s.params.temperature, s.params.top_p] for s in rows], dtype=torch.float32))
        ints = _pinned(torch.tensor([[s.params.top_k, s.params.seed, len(s.generated) + lag] for s in rows]))
        floats, ints = floats.to(logits.device, non_blocking=True), ints.to(logits.device, non_blocking=True)
        return sample(logits, floats[:, 0], ints[:, 0], floats[:, 1], ints[:, 1], ints[:, 2])
