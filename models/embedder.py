"""Sentence embeddings, fast: the embedding engine behind `Embedder.embed(texts) -> float32 [n, d]`.

Texts are tokenized in slices on a background thread (the Rust tokenizer releases the GIL) while
the device works on the previous slice. Each slice is length-sorted and cut into batches of at most
`token_budget` real tokens; batches are packed (no padding, see packed_encoder), copied from pinned
memory, run in fp16 on CUDA, and pooled in fp32 as the model's sentence-transformers config says.
One device-to-host copy per slice.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Encoding, Tokenizer
from tqdm.auto import tqdm

from mlabatch.models.packed_encoder import PackedEncoder, PackedLayout


@dataclass
class EmbedResult:
    """Embeddings with what the tokenizer did to each text."""

    embeddings: np.ndarray  # float32 [n, d]
    token_counts: list[int]  # tokens embedded, special tokens included
    truncated: list[bool]  # True where the text had more tokens than max_tokens


@dataclass(frozen=True)
class PoolingConfig:
    """How token vectors become one vector (sentence-transformers' 1_Pooling + Normalize modules)."""

    mode: str = "mean"  # "mean" or "cls"
    normalize: bool = True
    max_tokens: int = 512

    @classmethod
    def from_dir(cls, model_dir: Path) -> "PoolingConfig":
        """Read sentence-transformers' files if present; plain HF models get mean pooling, normalized."""
        config = json.loads((model_dir / "config.json").read_text())
        mode, normalize, max_tokens = "mean", True, int(config.get("max_position_embeddings", 512))
        modules_file = model_dir / "modules.json"
        if modules_file.exists():
            modules = json.loads(modules_file.read_text())
            normalize = any(m["type"].endswith("Normalize") for m in modules)
            for m in modules:
                if m["type"].endswith("Pooling"):
                    pooling = json.loads((model_dir / m["path"] / "config.json").read_text())
                    mode = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
        st_config = model_dir / "sentence_bert_config.json"
        if st_config.exists():
            max_tokens = int(json.loads(st_config.read_text()).get("max_seq_length", max_tokens))
        return cls(mode=mode, normalize=normalize, max_tokens=max_tokens)


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' means the current CUDA device when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def plan_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Row indices grouped by ascending length so each group holds at most `token_budget` tokens."""
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and used + lengths[i] > token_budget:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        batches.append(current)
    return batches


class Embedder:
    """Embeds texts with one packed encoder; holds no Spark or MLflow state, so it runs anywhere."""

    def __init__(self, encoder: PackedEncoder, tokenizer: Tokenizer, pooling: PoolingConfig,
                 device: torch.device, token_budget: int | None = None, slice_size: int = 4096):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.device = device
        self.dim = encoder.word.embedding_dim
        self.max_tokens = min(pooling.max_tokens, encoder.max_positions)
        # Large batches keep an H100 busy; on CPUs smaller ones keep the attention padding cheap.
        self.token_budget = token_budget or (65536 if device.type == "cuda" else 4096)
        self.slice_size = slice_size

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of whole texts, special tokens included, without truncation."""
        self.tokenizer.no_truncation()
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]

    def embed(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """float32 [len(texts), dim] embeddings."""
        return self.embed_with_counts(texts, show_progress).embeddings

    def _tokenize(self, texts: list[str]) -> list[Encoding]:
        return self.tokenizer.encode_batch(texts)

    @torch.inference_mode()
    def embed_with_counts(self, texts: Sequence[str], show_progress: bool = False) -> EmbedResult:
        """Embeddings plus token counts and truncation flags, rows in input order."""
        texts = list(texts)
        self.tokenizer.enable_truncation(self.max_tokens)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        counts: list[int] = []
        truncated: list[bool] = []
        starts = list(range(0, len(texts), self.slice_size))
        with ThreadPoolExecutor(max_workers=1) as pool, \
                tqdm(total=len(texts), desc="embedding", unit="text", disable=not show_progress) as bar:
            pending = pool.submit(self._tokenize, texts[:self.slice_size]) if texts else None
            for n, start in enumerate(starts):
                encodings = pending.result()
                if n + 1 < len(starts):  # tokenize the next slice while this one runs
                    nxt = starts[n + 1]
                    pending = pool.submit(self._tokenize, texts[nxt:nxt + self.slice_size])
                out[start:start + len(encodings)] = self._embed_encodings(encodings)
                counts += [len(e.ids) for e in encodings]
                truncated += [bool(e.overflowing) for e in encodings]
                bar.update(len(encodings))
        return EmbedResult(out, counts, truncated)

    def _embed_encodings(self, encodings: list[Encoding]) -> np.ndarray:
        lengths = [len(e.ids) for e in encodings]
        pooled = torch.empty((len(encodings), self.dim), dtype=torch.float32,
                             device=self.device)
        for rows in plan_batches(lengths, self.token_budget):
            ids = torch.from_numpy(np.concatenate([np.asarray(encodings[i].ids, dtype=np.int64) for i in rows]))
            if self.device.type == "cuda":
                ids = ids.pin_memory().to(self.device, non_blocking=True)
            layout = PackedLayout.from_lengths([lengths[i] for i in rows], self.device)
            hidden = self.encoder(ids, layout)
            pooled[torch.tensor(rows, device=self.device)] = self._pool(hidden, layout)
        return pooled.cpu().numpy()

    def _pool(self, hidden: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """[b, d] float32: mean over each sequence's tokens, or its first ([CLS]) token."""
        if self.pooling.mode == "cls":
            vectors = hidden[layout.cu_seqlens[:-1].long()].float()
        else:
            sums = torch.zeros((layout.num_seqs, hidden.shape[1]), dtype=torch.float32, device=hidden.device)
            sums.index_add_(0, layout.seq_index, hidden.float())
            vectors = sums / layout.cu_seqlens.diff().unsqueeze(1).float()
        return F.normalize(vectors, p=2, dim=1) if self.pooling.normalize else vectors
