"""CUDA graphs of the decode step, one per batch-size bucket (1, 2, 4, ... max_batch), captured at start-up.

A batch of b rows replays the smallest bucket >= b; the padding rows write their latent row to a
scratch page that no sequence owns and attend over it, so they never touch real cache rows. All
buckets share one memory pool. If a capture fails the engine stays eager (`error` says why).
"""
from __future__ import annotations

import torch

from mlabatch.models.mla_decoder import DecodeInputs, MLADecoder


def buckets(max_batch: int) -> list[int]:
    """Powers of two below max_batch, then max_batch itself."""
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 2
    return out + [max_batch]


class DecodeGraphs:
    """Static input buffers and one captured graph per bucket for `MLADecoder.decode_batch`."""

    def __init__(self, model: MLADecoder, kv: torch.Tensor, max_batch: int, table_width: int,
                 scratch_block: int) -> None:
        self.model, self.kv = model, kv
        self.sizes = buckets(max_batch)
        device = kv.device
        self.tokens = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.inputs = DecodeInputs(
            positions=torch.zeros(max_batch, dtype=torch.long, device=device),
            slot_blocks=torch.zeros(max_batch, dtype=torch.long, device=device),
            slot_offsets=torch.zeros(max_batch, dtype=torch.long, device=device),
            seqlens=torch.zeros(max_batch, dtype=torch.int32, device=device),
            block_table=torch.zeros(max_batch, table_width, dtype=torch.int32, device=device))
        self.scratch = scratch_block
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.pool = None
        self.error: str | None = None

    def fits(self, batch: int) -> bool:
        """Whether a graph can run this batch size."""
        return self.error is None and batch <= self.sizes[-1]

    def _rows(self, size: int) -> DecodeInputs:
        return DecodeInputs(*(t[:size] for t in self.inputs))

    def _pad(self, b: int, size: int) -> None:
        """Padding rows: token 0 at position 0 into scratch row 0, attending over that one row."""
        self.tokens[b:size] = 0
        self.inputs.positions[b:size] = 0
        self.inputs.slot_blocks[b:size] = self.scratch
        self.inputs.slot_offsets[b:size] = 0
        self.inputs.seqlens[b:size] = 1
        self.inputs.block_table[b:size] = self.scratch

    def _capture(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        self._pad(0, size)
        args = (self.tokens[:size], self._rows(size), self.kv)
        stream = torch.cuda.Stream(self.kv.device)
        stream.wait_stream(torch.cuda.current_stream(self.kv.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: lazy kernel loads and autotuning happen outside the capture
                self.model.decode_batch(*args)
        torch.cuda.current_stream(self.kv.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self.model.decode_batch(*args)
            greedy = logits.argmax(-1)
        return graph, logits, greedy

    def capture(self) -> None:
        """Capture every bucket now (start-up work, like a server's warm-up); on failure set `error` and stop."""
        for size in reversed(self.sizes):  # largest first: the smaller graphs reuse its pool memory
            try:
                self.graphs[size] = self._capture(size)
            except RuntimeError as err:
                self.error = f"CUDA graph capture failed at batch {size}: {err}"
                return

    def run(self, tokens: torch.Tensor, inputs: DecodeInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [b, vocab], argmax tokens [b]) of one decode step; only when `fits(b)`.

        The outputs are the graph's buffers, overwritten by the next replay.
        """
        b = tokens.shape[0]
        size = next(s for s in self.sizes if s >= b)
        self.tokens[:b] = tokens
        for static, given in zip(self.inputs[:-1], inputs[:-1]):
            static[:b] = given
        width = inputs.block_table.shape[1]
        self.inputs.block_table[:b, :width] = inputs.block_table
        self.inputs.block_table[:b, width:] = 0
        self._pad(b, size)
        graph, logits, greedy = self.graphs[size]
        graph.replay()
        return logits[:b], greedy[:b]
