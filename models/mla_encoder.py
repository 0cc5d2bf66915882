"""Runtime of MLA-converted BERT encoders: `load_mla_encoder(model_dir, device)` -> last hidden states.

Encoders have no KV cache, so attention runs in the non-absorbed form (expanded K/V through SDPA).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers.activations import ACT2FN

from mlabatch.models.mla_attention import MLAAttention, MLAShape
from mlabatch.models.mla_config import MLAModelConfig, read_converted
class _Embeddings(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        d = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], d)
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], d)
        self.token_type_embeddings = nn.Embedding(cfg["type_vocab_size"], d)
        self.LayerNorm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(pos)[None] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _EncoderLayer(nn.Module):
    def __init__(self, cfg: dict, shape: MLAShape) -> None:
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        self.attn = MLAAttention(shape)
        self.attn_norm = nn.LayerNorm(d, eps=eps)
        self.ffn_in = nn.Linear(d, cfg["intermediate_size"])
        self.ffn_out = nn.Linear(cfg["intermediate_size"], d)
        self.ffn_norm = nn.LayerNorm(d, eps=eps)
        self.act = ACT2FN[cfg["hidden_act"]]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        p = self.attn.project(x, None)
        x = self.attn_norm(x + self.attn(p, p.rows, mask=mask))
        return self.ffn_norm(x + self.ffn_out(self.act(self.ffn_in(x))))


class MLAEncoder(nn.Module):
    """BERT with MLA attention; token type 0 everywhere, as sentence-transformers uses it."""

    def __init__(self, cfg: dict, mla: MLAModelConfig) -> None:
        super().__init__()
        shape = mla.attention_shape(cfg["hidden_size"])
        self.embeddings = _Embeddings(cfg)
        self.layers = nn.ModuleList(_EncoderLayer(cfg, shape) for _ in range(cfg["num_hidden_layers"]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states [b, t, hidden] for token ids [b, t] and a 0/1 padding mask [b, t]."""
        mask = attention_mask.bool()
        x = self.embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, mask)
        return x


def load_mla_encoder(model_dir: str | Path, device: str | torch.device = "cpu") -> MLAEncoder:
    """Load a converted encoder onto `device` in eval mode (float16 on CUDA, float32 elsewhere)."""
    mla, cfg, state = read_converted(model_dir, "encoder")
    model = MLAEncoder(cfg, mla)
    model.load_state_dict(state)
    device = torch.device(device)
    model = model.to(device).eval()
    model = model.half() if device.type == "cuda" else model
    for layer in model.layers:
        layer.attn.fuse()
    return model
