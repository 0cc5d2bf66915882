"""How token vectors become one vector per text, and windows one vector per document."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mlabatch.models.varlen import PackedLayout


@dataclass(frozen=True)
class PoolingConfig:
    """sentence-transformers' 1_Pooling + Normalize modules, and the model's longest input."""

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


def pool_tokens(hidden: torch.Tensor, layout: PackedLayout, pooling: PoolingConfig) -> torch.Tensor:
    """[b, d] float32 from packed hidden states [T, d]: mean over each sequence's tokens, or its first ([CLS])."""
    if pooling.mode == "cls":
        vectors = hidden[layout.cu_seqlens[:-1].long()].float()
    else:
        sums = torch.zeros((layout.num_seqs, hidden.shape[1]), dtype=torch.float32, device=hidden.device)
        sums.index_add_(0, layout.seq_index, hidden.float())
        vectors = sums / layout.cu_seqlens.diff().unsqueeze(1).float()
    return F.normalize(vectors, p=2, dim=1) if pooling.normalize else vectors


def pool_windows(vectors: np.ndarray, token_counts: Sequence[int], owners: np.ndarray, n: int,
                 normalize: bool) -> np.ndarray:
    """One vector per owner: the token-count-weighted mean of its windows' vectors (renormalized)."""
    weights = np.asarray(token_counts, dtype=np.float32)[:, None]
    sums = np.zeros((n, vectors.shape[1]), dtype=np.float32)
    np.add.at(sums, owners, vectors * weights)
    totals = np.zeros(n, dtype=np.float32)
    np.add.at(totals, owners, weights[:, 0])
    pooled = sums / np.maximum(totals, 1e-9)[:, None]
    if normalize:
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return pooled
