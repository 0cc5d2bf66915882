"""Runtime of MLA-converted Llama-family decoders (Llama, Mistral, Qwen2/3, Phi-3): prefill into a paged latent cache, then one-token decode steps.

The cache is a tensor `kv [layers, blocks, 64, 1, d_c + d_rope]`; which slots a token uses is decided by
the caller (the generation engine's block manager) and passed in. `prefill` runs the non-absorbed form
(causal varlen attention) on one packed batch of prompts and stores each layer's latent rows;
`decode_batch` runs the absorbed form, one `flash_mla_with_kvcache` call per layer for the whole batch.
`forward` is the cache-free non-absorbed reference over whole sequences.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mlabatch.kernels import flash_mla_with_kvcache, get_mla_metadata
from mlabatch.kernels.elementwise import swiglu
from mlabatch.models.mla_attention import MLAAttention
from mlabatch.models.mla_config import MLAModelConfig, read_converted
from mlabatch.models.rope import RopeTables, rope_tables
from mlabatch.models.varlen import PackedLayout


class DecodeInputs(NamedTuple):
    """One decode step's per-row inputs, on the device: where each new token sits and what it attends to."""

    positions: torch.Tensor  # long [b]: the new token's position
    slot_blocks: torch.Tensor  # long [b]: the cache block its latent row goes to
    slot_offsets: torch.Tensor  # long [b]: the row inside that block
    seqlens: torch.Tensor  # int32 [b]: cached tokens including the new one
    block_table: torch.Tensor  # int32 [b, max_blocks]: each row's blocks in position order


class _MLP(nn.Module):
    def __init__(self, d: int, inner: int, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, inner, bias=bias)
        self.up_proj = nn.Linear(d, inner, bias=bias)
        self.down_proj = nn.Linear(inner, d, bias=bias)
        self._gate_up: tuple[torch.Tensor, torch.Tensor | None] | None = None  # set by fuse()

    def fuse(self) -> None:
        """Gate and up projections from one matmul (their weights become views of the fused tensor)."""
        inner = self.gate_proj.out_features
        weight = torch.cat((self.gate_proj.weight.detach(), self.up_proj.weight.detach()))
        self.gate_proj.weight = nn.Parameter(weight[:inner], requires_grad=False)
        self.up_proj.weight = nn.Parameter(weight[inner:], requires_grad=False)
        bias = None
        if self.gate_proj.bias is not None:
            bias = torch.cat((self.gate_proj.bias.detach(), self.up_proj.bias.detach()))
            self.gate_proj.bias = nn.Parameter(bias[:inner], requires_grad=False)
            self.up_proj.bias = nn.Parameter(bias[inner:], requires_grad=False)
        self._gate_up = (weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._gate_up is None:
            raise RuntimeError("MLADecoder.fuse() must run before the model is used (load_mla_decoder calls it)")
        return self.down_proj(swiglu(F.linear(x, *self._gate_up)))


class _DecoderLayer(nn.Module):
    def __init__(self, cfg: dict, mla: MLAModelConfig) -> None:
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.attn_norm = nn.RMSNorm(d, eps=eps)
        self.attn = MLAAttention(mla.attention_shape(d, eps))
        self.mlp_norm = nn.RMSNorm(d, eps=eps)
        self.mlp = _MLP(d, cfg["intermediate_size"], bool(cfg.get("mlp_bias", False)))


class MLADecoder(nn.Module):
    """A Llama-family decoder with MLA attention; logits in float32."""

    def __init__(self, cfg: dict, mla: MLAModelConfig) -> None:
        super().__init__()
        self.mla = mla
        self.max_positions = int(cfg.get("max_position_embeddings", 1 << 20))
        d = cfg["hidden_size"]
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], d)
        self.layers = nn.ModuleList(_DecoderLayer(cfg, mla) for _ in range(cfg["num_hidden_layers"]))
        self.norm = nn.RMSNorm(d, eps=cfg["rms_norm_eps"])
        self.lm_head = nn.Linear(d, cfg["vocab_size"], bias=False)
        if mla.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("rope_inv_freq", torch.zeros(mla.attention_shape(d).rope_unit // 2))

    def fuse(self) -> None:
        """One matmul for each layer's attention inputs and one for gate + up; call after moving the model."""
        for layer in self.layers:
            layer.attn.fuse()
            layer.mlp.fuse()

    def _rope(self, positions: torch.Tensor) -> RopeTables:
        return rope_tables(positions, self.rope_inv_freq, self.mla.rope_scaling, self.embed_tokens.weight.dtype)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(x)).float()

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits [b, t, vocab] of unpadded sequences [b, t], non-absorbed, without a cache."""
        x = self.embed_tokens(input_ids)
        rope = self._rope(torch.arange(input_ids.shape[1], device=input_ids.device)[None])
        for layer in self.layers:
            p = layer.attn.project(layer.attn_norm(x), rope)
            x = x + layer.attn(p, p.rows, causal=True)
            x = x + layer.mlp(layer.mlp_norm(x))
        return self._logits(x)

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]], kv: torch.Tensor, slots: tuple[torch.Tensor, torch.Tensor]
                ) -> torch.Tensor:
        """Run prompts as one packed batch (no padding), storing each token's latent rows at `slots`.

        `slots` (block ids, offsets), long [total tokens] in prompt order. Returns each prompt's
        last-token logits [k, vocab] (float32).
        """
        if any(not ids for ids in prompts):
            raise ValueError("prefill needs at least one token per prompt")
        device = self.embed_tokens.weight.device
        layout = PackedLayout.from_lengths([len(p) for p in prompts]).to(device)
        ids = torch.tensor([t for p in prompts for t in p])
        blocks, offsets = (s.to(device) for s in slots)
        x = self.embed_tokens(ids.to(device))[None]
        rope = self._rope(layout.positions[None])
        for i, layer in enumerate(self.layers):
            p = layer.attn.project(layer.attn_norm(x), rope)
            kv[i, blocks, offsets, 0] = p.rows[0].to(kv.dtype)
            x = x + layer.attn.forward_packed(p, p.rows, layout)
            x = x + layer.mlp(layer.mlp_norm(x))
        return self._logits(x[0, layout.cu_seqlens[1:].long() - 1])

    @torch.no_grad()
    def decode_batch(self, tokens: torch.Tensor, step: DecodeInputs, kv: torch.Tensor) -> torch.Tensor:
        """One decode step on device tensors only (no host sync, so CUDA graphs can capture it).

        tokens [b] long, the step's inputs, and kv the cache tensor [layers, blocks, 64, 1, width].
        Returns logits [b, vocab] in the model's dtype.
        """
        row = kv.shape[-1]  # d_c + d_rope: narrow rows get the two-CTAs-per-SM schedule
        meta, splits = get_mla_metadata(step.seqlens, self.mla.n_heads, 1, head_dim_qk=row)
        x = self.embed_tokens(tokens)[:, None]
        rope = self._rope(step.positions[:, None])
        for i, layer in enumerate(self.layers):
            p = layer.attn.project(layer.attn_norm(x), rope)
            kv[i, step.slot_blocks, step.slot_offsets, 0] = p.rows[:, 0].to(kv.dtype)
            q = layer.attn.absorbed_queries(p)
            out, _ = flash_mla_with_kvcache(q, kv[i], step.block_table, step.seqlens, self.mla.kernel_head_dim_v,
                                            meta, splits, softmax_scale=layer.attn.scale, causal=False)
            x = x + layer.attn.absorbed_output(out)
            x = x + layer.mlp(layer.mlp_norm(x))
        return self.lm_head(self.norm(x[:, 0]))  # the model's dtype: argmax needs no float copy of the vocab


def load_mla_decoder(model_dir: str | Path, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> MLADecoder:
    """Load a converted decoder onto `device` in eval mode."""
    mla, cfg, state = read_converted(model_dir, "decoder")
    model = MLADecoder(cfg, mla)
    if mla.tie_word_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state)
    model = model.to(device=device, dtype=dtype).eval()
    model.rope_inv_freq = model.rope_inv_freq.float()  # RoPE angles stay float32 in 16-bit models
    model.fuse()
    return model

