"""Runtime of MLA-converted Llama/Qwen2 decoders: prefill into a paged latent cache, then one-token decode steps.

Prefill runs the non-absorbed form (causal varlen attention) on packed batches of prompts and stores
each layer's latent rows; `decode_step` / `decode_batch` run the absorbed form, one `flash_mla_with_kvcache`
call per layer for the whole batch.
`forward` is the cache-free non-absorbed reference over whole sequences.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from mlabatch.kernels import flash_mla_with_kvcache, get_mla_metadata
from mlabatch.kernels.elementwise import swiglu
from mlabatch.models.mla_attention import MLAAttention
from mlabatch.models.mla_config import MLA_CONFIG_FILE
from mlabatch.models.mla_encoder import mla_shape
from mlabatch.models.paged_cache import PagedLatentCache
from mlabatch.models.rope import RopeTables, rope_tables
from mlabatch.models.varlen import PackedLayout


PREFILL_TOKENS = 16384  # tokens per prefill forward pass: bounds activation memory

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
    def __init__(self, cfg: dict, mla: dict) -> None:
        super().__init__()
        d, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.attn_norm = nn.RMSNorm(d, eps=eps)
        self.attn = MLAAttention(mla_shape(mla, d))
        self.mlp_norm = nn.RMSNorm(d, eps=eps)
        self.mlp = _MLP(d, cfg["intermediate_size"], bool(cfg.get("mlp_bias", False)))


class MLADecoder(nn.Module):
    """Llama/Qwen2 with MLA attention; logits in float32."""

    def __init__(self, cfg: dict, mla: dict) -> None:
        super().__init__()
        self.mla = mla
        d = cfg["hidden_size"]
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], d)
        self.layers = nn.ModuleList(_DecoderLayer(cfg, mla) for _ in range(cfg["num_hidden_layers"]))
        self.norm = nn.RMSNorm(d, eps=cfg["rms_norm_eps"])
        self.lm_head = nn.Linear(d, cfg["vocab_size"], bias=False)
        if mla["tie_word_embeddings"]:
            self.lm_head.weight = self.embed_tokens.weight
        self.register_buffer("rope_inv_freq", torch.zeros(mla["head_dim"] // 2))

    @property
    def cache_width(self) -> int:
        """Values per cached token per layer (d_c + d_rope)."""
        return self.mla["d_c"] + self.mla["d_rope"]

    def new_cache(self, num_blocks: int) -> PagedLatentCache:
        """An empty paged cache of `num_blocks` pages of 64 tokens on this model's device and dtype."""
        p = self.embed_tokens.weight
        return PagedLatentCache(len(self.layers), self.cache_width, num_blocks, dtype=p.dtype, device=p.device)

    def fuse(self) -> None:
        """One matmul for each layer's attention inputs and one for gate + up; call after moving the model."""
        for layer in self.layers:
            layer.attn.fuse()
            layer.mlp.fuse()

    def _rope(self, positions: torch.Tensor) -> RopeTables:
        return rope_tables(positions, self.rope_inv_freq, self.mla["rope_scaling"], self.embed_tokens.weight.dtype)

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
    def prefill(self, input_ids_list: list[list[int]], cache: PagedLatentCache) -> tuple[list[int], torch.Tensor]:
        """Add each prompt to `cache`; returns (sequence ids, logits of each prompt's last token [b, vocab]).

        Prompts run packed (no padding), at most PREFILL_TOKENS tokens per forward pass.
        """
        if any(not ids for ids in input_ids_list):
            raise ValueError("prefill needs at least one token per prompt")
        seqs = [cache.add() for _ in input_ids_list]
        logits, group, tokens = [], [], 0
        for j, ids in enumerate(input_ids_list):
            if group and tokens + len(ids) > PREFILL_TOKENS:
                logits.append(self._prefill_packed([input_ids_list[i] for i in group], [seqs[i] for i in group], cache))
                group, tokens = [], 0
            group.append(j)
            tokens += len(ids)
        logits.append(self._prefill_packed([input_ids_list[i] for i in group], [seqs[i] for i in group], cache))
        return seqs, torch.cat(logits)

    def _prefill_packed(self, prompts: list[list[int]], seqs: list[int], cache: PagedLatentCache) -> torch.Tensor:
        """Prefill prompts as one packed batch; returns last-token logits [k, vocab]."""
        device = self.embed_tokens.weight.device
        layout = PackedLayout.from_lengths([len(p) for p in prompts])
        ids = torch.tensor([t for p in prompts for t in p])
        slots = [cache.append(s, len(p)) for s, p in zip(seqs, prompts)]
        slots = (torch.cat([b for b, _ in slots]), torch.cat([o for _, o in slots]))
        layout = layout.to(device)
        x = self.embed_tokens(ids.to(device))[None]
        rope = self._rope(layout.positions[None])
        for i, layer in enumerate(self.layers):
            p = layer.attn.project(layer.attn_norm(x), rope)
            cache.write(i, slots, p.rows[0])
            x = x + layer.attn.forward_packed(p, p.rows, layout)
            x = x + layer.mlp(layer.mlp_norm(x))
        return self._logits(x[0, layout.cu_seqlens[1:].long() - 1])

    @torch.no_grad()
    def decode_step(self, seqs: list[int], tokens: torch.Tensor, cache: PagedLatentCache) -> torch.Tensor:
        """Append one token per sequence [b] and return next-token logits [b, vocab] (absorbed, paged)."""
        positions = cache.seqlens(seqs).long()
        slots = [cache.append(s, 1) for s in seqs]
        slots = (torch.cat([s[0] for s in slots]), torch.cat([s[1] for s in slots]))
        return self.decode_batch(tokens.to(positions.device), positions, slots, cache.block_table(seqs),
                                 cache.seqlens(seqs), cache.kv)

    @torch.no_grad()
    def decode_batch(self, tokens: torch.Tensor, positions: torch.Tensor, slots: tuple[torch.Tensor, torch.Tensor],
                     block_table: torch.Tensor, seqlens: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """One decode step on device tensors only (no host sync, so CUDA graphs can capture it).

        tokens [b] long; positions [b] long (the new token's position); slots (block ids, offsets) [b] long
        where its latent row goes; block_table int32 [b, m] and seqlens int32 [b] (including the new
        token); kv the cache tensor [layers, blocks, 64, 1, width]. Returns logits [b, vocab] in the model's dtype.
        """
        n_heads = self.mla["n_heads"]
        row = kv.shape[-1]  # d_c + d_rope: narrow rows get the two-CTAs-per-SM schedule
        meta, splits = get_mla_metadata(seqlens, n_heads, 1, head_dim_qk=row)
        x = self.embed_tokens(tokens)[:, None]
        rope = self._rope(positions[:, None])
        for i, layer in enumerate(self.layers):
            p = layer.attn.project(layer.attn_norm(x), rope)
            kv[i, slots[0], slots[1], 0] = p.rows[:, 0].to(kv.dtype)
            q = layer.attn.absorbed_queries(p)
            out, _ = flash_mla_with_kvcache(q, kv[i], block_table, seqlens, self.mla["kernel_head_dim_v"],
                                            meta, splits, softmax_scale=layer.attn.scale, causal=False)
            x = x + layer.attn.absorbed_output(out)
            x = x + layer.mlp(layer.mlp_norm(x))
        return self.lm_head(self.norm(x[:, 0]))  # the model's dtype: argmax needs no float copy of the vocab


def load_mla_decoder(model_dir: str | Path, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> MLADecoder:
    """Load a converted decoder onto `device` in eval mode."""
    model_dir = Path(model_dir)
    mla = json.loads((model_dir / MLA_CONFIG_FILE).read_text())
    if mla.get("kind") != "decoder":
        raise ValueError(f"{model_dir} holds a converted {mla.get('kind')} model, not a decoder")
    cfg = json.loads((model_dir / "config.json").read_text())
    model = MLADecoder(cfg, mla)
    state = load_file(str(model_dir / "model.safetensors"))
    if mla["tie_word_embeddings"]:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state)
    model = model.to(device=device, dtype=dtype).eval()
    model.rope_inv_freq = model.rope_inv_freq.float()  # RoPE angles stay float32 in 16-bit models
    model.fuse()
    return model

