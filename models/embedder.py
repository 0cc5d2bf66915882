"""Sentence embeddings: tokenizer + encoder network + pooling, the way sentence-transformers does it.

`Embedder.embed(texts)` returns float32 [n, d]; `embed_with_counts` also returns per-text token
counts and truncation flags, which the UDF reports per row.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

# A network maps (input_ids, attention_mask) to last hidden states [b, t, hidden].
Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


class Embedder:
    """Embeds texts with one encoder; holds no Spark or MLflow state, so it runs anywhere."""

    def __init__(self, network: Network, tokenizer: Tokenizer, pooling: PoolingConfig,
                 device: torch.device, dim: int):
        self.network = network
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.device = device
        self.dim = dim

    @property
    def max_tokens(self) -> int:
        """Longest input the model embeds; longer texts are cut and flagged."""
        return self.pooling.max_tokens

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts of whole texts, special tokens included, without truncation."""
        self.tokenizer.no_truncation()
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]

    def embed(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """float32 [len(texts), dim] embeddings."""
        return self.embed_with_counts(texts, batch_size, show_progress).embeddings

    @torch.inference_mode()
    def embed_with_counts(self, texts: Sequence[str], batch_size: int = 64,
                          show_progress: bool = False) -> EmbedResult:
        """Embed in length-sorted batches (less padding), returning rows in the input order."""
        self.tokenizer.enable_truncation(self.max_tokens)
        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        out = np.zeros((len(encodings), self.dim), dtype=np.float32)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="embedding", unit="batch", disable=not show_progress):
            rows = order[start:start + batch_size]
            out[rows] = self._embed_batch([encodings[i].ids for i in rows])
        return EmbedResult(
            embeddings=out,
            token_counts=[len(e.ids) for e in encodings],
            truncated=[bool(e.overflowing) for e in encodings],
        )

    def _embed_batch(self, ids: list[list[int]]) -> np.ndarray:
        width = max(len(x) for x in ids)
        input_ids = torch.zeros((len(ids), width), dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        hidden = self.network(input_ids, mask).float()
        if self.pooling.mode == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.pooling.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.cpu().numpy()
