"""BERT-family encoders run on packed tokens: no padding enters the linear layers or attention.

A batch of sequences is one [T, d] tensor of real tokens plus cumulative lengths. Token-wise work
(embeddings, projections, feed-forward, LayerNorm) runs on T rows only; attention is variable-length
(FlashAttention's varlen kernel through torch on CUDA, masked SDPA over a padded view on the CPU).
Built from a Hugging Face BERT-family model (BERT, RoBERTa, XLM-R, DistilBERT) or from an MLA-converted
encoder, sharing the same weights.
"""
from __future__ import annotations

import torch
from torch import nn

from mlabatch.models.mla_encoder import EncoderDims
from mlabatch.models.varlen import PackedLayout, varlen_attention


class FusedQKV(nn.Module):
    """Queries, keys and values from one matmul (BERT's three projections concatenated)."""

    def __init__(self, q: nn.Linear, k: nn.Linear, v: nn.Linear, heads: int):
        super().__init__()
        self.heads = heads
        self.proj = nn.Linear(q.in_features, 3 * q.out_features)
        with torch.no_grad():
            self.proj.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            self.proj.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.proj(x).view(x.shape[0], 3, self.heads, -1).unbind(1)
        return q, k, v


class LatentQKV(nn.Module):
    """Queries, keys and values of an MLA-converted layer: keys and values expanded from the latent."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        if attn.shape.d_rope or not attn.shape.has_nope:
            raise ValueError("packed encoders support MLA layers without RoPE (BERT-family) only")
        self.attn = attn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.attn.project(x, None)
        k, v = self.attn.expand(p.rows)
        return p.queries, k, v


class PackedLayer(nn.Module):
    """A post-LayerNorm transformer encoder layer (BERT's) on packed tokens."""

    def __init__(self, qkv: nn.Module, out: nn.Linear, attn_norm: nn.LayerNorm, ffn_in: nn.Linear,
                 ffn_out: nn.Linear, ffn_norm: nn.LayerNorm, act):
        super().__init__()
        self.qkv, self.out, self.attn_norm = qkv, out, attn_norm
        self.ffn_in, self.ffn_out, self.ffn_norm, self.act = ffn_in, ffn_out, ffn_norm, act

    def forward(self, x: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        attended = varlen_attention(*self.qkv(x), layout).reshape(x.shape[0], -1)
        x = self.attn_norm(x + self.out(attended))
        return self.ffn_norm(x + self.ffn_out(self.act(self.ffn_in(x))))


class PackedEncoder(nn.Module):
    """Embeddings (word + learned position + token type 0, where the family has token types) and layers,
    on packed tokens; positions count from `position_offset` (padding_idx + 1 in RoBERTa/XLM-R)."""

    def __init__(self, word: nn.Embedding, position: nn.Embedding, token_type: nn.Embedding | None,
                 norm: nn.LayerNorm, layers: list[PackedLayer], position_offset: int = 0):
        super().__init__()
        self.word, self.position, self.token_type, self.norm = word, position, token_type, norm
        self.position_offset = position_offset
        self.layers = nn.ModuleList(layers)

    @property
    def max_positions(self) -> int:
        return self.position.num_embeddings - self.position_offset

    def forward(self, ids: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """Hidden states [T, d] for packed token ids [T]."""
        x = self.word(ids) + self.position(layout.positions + self.position_offset)
        if self.token_type is not None:
            x = x + self.token_type.weight[0]
        x = self.norm(x)
        for layer in self.layers:
            x = layer(x, layout)
        return x


def packed_from_hf(model: nn.Module, dims: EncoderDims) -> PackedEncoder:
    """Wrap a transformers BertModel, RobertaModel, XLMRobertaModel or DistilBertModel (no copies but the fused
    QKV); `dims` from the model's config.json."""
    emb, heads = model.embeddings, model.config.num_attention_heads
    if model.config.model_type == "distilbert":
        layers = [
            PackedLayer(FusedQKV(layer.attention.q_lin, layer.attention.k_lin, layer.attention.v_lin, heads),
                        layer.attention.out_lin, layer.sa_layer_norm, layer.ffn.lin1, layer.ffn.lin2,
                        layer.output_layer_norm, layer.ffn.activation)
            for layer in model.transformer.layer
        ]
    else:
        layers = [
            PackedLayer(
                FusedQKV(layer.attention.self.query, layer.attention.self.key, layer.attention.self.value, heads),
                layer.attention.output.dense, layer.attention.output.LayerNorm,
                layer.intermediate.dense, layer.output.dense, layer.output.LayerNorm,
                layer.intermediate.intermediate_act_fn,
            )
            for layer in model.encoder.layer
        ]
    return PackedEncoder(emb.word_embeddings, emb.position_embeddings, getattr(emb, "token_type_embeddings", None),
                         emb.LayerNorm, layers, dims.position_offset)


def packed_from_mla_encoder(model: nn.Module) -> PackedEncoder:
    """Wrap an MLA-converted encoder (mlabatch.models.mla_encoder.MLAEncoder)."""
    emb = model.embeddings
    layers = [
        PackedLayer(LatentQKV(layer.attn), layer.attn.o_proj, layer.attn_norm, layer.ffn_in,
                    layer.ffn_out, layer.ffn_norm, layer.act)
        for layer in model.layers
    ]
    return PackedEncoder(emb.word_embeddings, emb.position_embeddings, getattr(emb, "token_type_embeddings", None),
                         emb.LayerNorm, layers, model.dims.position_offset)
