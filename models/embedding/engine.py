"""Sentence embeddings, fast: the embedding engine behind `Embedder.embed(texts) -> float32 [n, d]`.

Host work runs on two background threads (`batching`): one tokenizes texts in slices, the other sorts
each slice by length, cuts it into batches of at most `token_budget` real tokens and packs each batch
into pinned tensors. The calling thread only copies batches to the device and runs them (fp16 on
CUDA), pooling in fp32 into one result tensor that is copied back once at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer

from mlabatch.models.device import pick_device
from mlabatch.models.embedding.batching import HostBatch, in_background, plan_batches
from mlabatch.models.embedding.encoders import load_encoder
from mlabatch.models.embedding.chunking import split_text
from mlabatch.models.embedding.pooling import PoolingConfig, pool_tokens, pool_windows
from mlabatch.models.packed_encoder import PackedEncoder
from mlabatch.models.tokenizer import load_tokenizer

SLICE_TEXTS = 2048  # texts tokenized per background step


@dataclass
class EmbedResult:
    """Embeddings with what the tokenizer did to each text."""

    embeddings: np.ndarray  # float32 [n, d]
    token_counts: list[int]  # tokens embedded, special tokens included
    truncated: list[bool]  # True where the text had more tokens than max_tokens


class Embedder:
    """Embeds texts with one packed encoder; holds no Spark or MLflow state, so it runs anywhere."""

    def __init__(self, encoder: PackedEncoder, tokenizer: Tokenizer, pooling: PoolingConfig,
                 device: torch.device, token_budget: int | None = None):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.device = device
        self.dim = encoder.word.embedding_dim
        self.max_tokens = min(pooling.max_tokens, encoder.max_positions)
        # Large batches keep an H100 busy; on CPUs smaller ones keep the attention padding cheap.
        self.token_budget = token_budget or (65536 if device.type == "cuda" else 4096)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim] embeddings."""
        return self.embed_with_counts(texts).embeddings

    def embed_documents(self, texts: Sequence[str], window: int | None = None, overlap: int = 32,
                        max_chunks: int = 64) -> EmbedResult:
        """One vector per document however long: overlapping windows, embedded, averaged by token count.

        `window` defaults to the model's max_tokens. `token_counts` are the tokens embedded per
        document; `truncated` marks documents cut at max_chunks.
        """
        window = min(window or self.max_tokens, self.max_tokens)
        windows = [split_text(t, self.tokenizer, window, overlap, max_chunks) for t in texts]
        result = self.embed_with_counts([c.text for w in windows for c in w])
        owners = np.repeat(np.arange(len(windows)), [len(w) for w in windows])
        pooled = pool_windows(result.embeddings, result.token_counts, owners, len(windows), self.pooling.normalize)
        counts = np.zeros(len(windows), dtype=np.int64)
        np.add.at(counts, owners, result.token_counts)
        return EmbedResult(pooled, counts.tolist(), [any(c.truncated for c in w) for w in windows])

    @torch.inference_mode()
    def embed_with_counts(self, texts: Sequence[str]) -> EmbedResult:
        """Embeddings plus token counts and truncation flags, rows in input order."""
        texts = list(texts)
        counts = [0] * len(texts)
        truncated = [False] * len(texts)
        pooled = torch.zeros((len(texts), self.dim), dtype=torch.float32, device=self.device)
        self.tokenizer.enable_truncation(self.max_tokens)
        slices = in_background(lambda: ((start, self.tokenizer.encode_batch(texts[start:start + SLICE_TEXTS]))
                                        for start in range(0, len(texts), SLICE_TEXTS)), depth=2)
        for batch in in_background(lambda: self._pack(slices, counts, truncated), depth=16):
            rows, ids, layout = batch.to(self.device)
            pooled[rows] = pool_tokens(self.encoder(ids, layout), layout, self.pooling)
        return EmbedResult(pooled.cpu().numpy(), counts, truncated)

    def _pack(self, slices: Iterator[tuple[int, list]], counts: list[int],
              truncated: list[bool]) -> Iterator[HostBatch]:
        """Tokenized slices -> length-sorted, token-budgeted, packed host batches; records counts."""
        pin = self.device.type == "cuda"
        for start, encodings in slices:
            ids = [e.ids for e in encodings]
            lengths = [len(x) for x in ids]
            for i, e in enumerate(encodings):
                counts[start + i] = lengths[i]
                truncated[start + i] = bool(e.overflowing)
            for rows in plan_batches(lengths, self.token_budget):
                yield HostBatch.pack([ids[i] for i in rows], [start + i for i in rows], pin)


def load_embedder(model_dir: str | Path, device: str | torch.device = "auto", token_budget: int | None = None
                  ) -> Embedder:
    """An embedder for a local model directory (a BERT-family model or an MLA-converted one) on `device`."""
    model_dir, target = Path(model_dir), pick_device(device)
    return Embedder(load_encoder(model_dir, target), load_tokenizer(model_dir), PoolingConfig.from_dir(model_dir),
                    target, token_budget=token_budget)
