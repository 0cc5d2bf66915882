"""Convert a Hugging Face model directory (a family of `families.FAMILIES`) to MLA: `convert(hf_dir, config, out_dir)`.

Per layer, keys are rotated per frequency (RoRoPE) into d_rope RoPE'd dims and the rest; the RoPE slots
go to the key mixes that lose most without RoPE, the same frequencies in every layer (fast frequencies may
take several slots, slow ones none: `rope.rope_slots`; the slots' frequencies are saved as
`rope_inv_freq`). The no-RoPE keys and the values are compressed into the latent c: `[K_nope ; V] ~= B c`,
`c = C x`, the rank-d_c map minimizing `E||W ([K_nope ; V] - B C x)||^2`. For "pca", W^2 is the
covariance-aware metric of `_error_weights` (errors counted as attention-output error, after CARE) with x
statistics from calibration, and encoders calibrate sequentially (each layer fitted on the input that the
converted layers before it produce, against the source's K and V); "svd" and "exact" use W = I and
E[x x^T] = I. Biases: b_q stays in the query, b_k is dropped where no RoPE touches it, b_v goes to the output
bias. The output directory holds `model.safetensors`, `mla_config.json`, the source's `config.json`,
tokenizer and sentence-transformers files.
"""
from __future__ import annotations

import copy
import re
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mlabatch.kernels import SUPPORTED_D_ROPE, SUPPORTED_D_V, kernel_dims
from mlabatch.models.conversion.calibration import (LayerStats, cache_key, calibration_texts, collect_fed_stats,
                                                    collect_normed_stats, collect_stats, load_stats, save_stats)
from mlabatch.models.conversion.config import ConversionError, MLAConfig
from mlabatch.models.conversion.families import Family, SourceShape, read_source_shape, split_fused
from mlabatch.models.conversion.linalg import eigh_descending
from mlabatch.models.conversion.rorope import rope_slots, rorope_mixes, rorope_rotation
from mlabatch.models.mla_config import MLAModelConfig


def allowed_d_rope(shape: SourceShape) -> list[int]:
    """d_rope values a source can convert to: below a head (RoRoPE into fewer dims, even), whole heads up to
    every key kept."""
    hd, nkv = shape.head_dim, shape.n_kv_heads
    if not shape.has_rope:
        return [0]
    return list(range(2, hd, 2)) + [hd * n for n in range(1, nkv + 1)]


def resolve_widths(shape: SourceShape, config: MLAConfig) -> tuple[int, int]:
    """(d_c, d_rope) for this model, validated; raises ConversionError naming the allowed values."""
    hd, nkv = shape.head_dim, shape.n_kv_heads
    allowed = allowed_d_rope(shape)
    d_rope = config.d_rope if config.d_rope is not None else shape.exact_d_rope()
    if d_rope not in allowed:
        if not shape.has_rope:
            raise ConversionError(f"d_rope={d_rope}: {shape.arch} has no RoPE, use d_rope=0")
        raise ConversionError(f"d_rope={d_rope} is not allowed for {shape.arch}: choose an even value below {hd} "
                              f"(RoRoPE into fewer dims, e.g. 64), or a multiple of {hd} up to {hd * nkv} "
                              f"(keys kept exactly)")
    exact = shape.exact_d_c(d_rope)
    if config.method == "exact":
        if d_rope != shape.exact_d_rope() or config.d_c not in (None, exact):
            full = shape.exact_d_c(shape.exact_d_rope())
            raise ConversionError(f"method 'exact' needs d_c={full} and d_rope={shape.exact_d_rope()} "
                                  f"(or leave both unset) for {shape.arch}")
    d_c = exact if config.d_c is None else config.d_c
    if not 1 <= d_c <= exact:
        raise ConversionError(f"d_c={d_c} is larger than exact ({exact}) for {shape.arch} with d_rope={d_rope}; "
                              f"choose 1 <= d_c <= {exact}")
    if shape.family.kind == "decoder" and kernel_dims(d_c, d_rope) is None:
        nearest = f"e.g. method pca with d_c={max(v for v in SUPPORTED_D_V if v <= max(exact, 128))}, d_rope=64"
        raise ConversionError(f"d_c={d_c}, d_rope={d_rope} is not supported by the decode kernel: it needs d_c in "
                              f"{SUPPORTED_D_V} with d_rope in {SUPPORTED_D_ROPE}, or d_c + d_rope in {SUPPORTED_D_V}; "
                              f"{nearest}")
    return d_c, d_rope


def _attention_weights(state: dict[str, torch.Tensor], arch: Family, i: int) -> dict[str, torch.Tensor]:
    """Source q/k/v/o weights and biases of layer i in float64 (zero biases where the source has none)."""
    out = {}
    for name in ("q", "k", "v", "o"):
        key = arch.layer.format(i=i) + getattr(arch, name)
        w = state[key + ".weight"].double()
        out["w" + name] = w
        bias = state.get(key + ".bias")
        out["b" + name] = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.double()
    return out


def _sqrt_and_inv(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric square root of a PSD matrix and its inverse (eigenvalues floored at 1e-8 of the largest)."""
    vals, vecs = eigh_descending(g)
    vals = vals.clamp(min=vals[0].item() * 1e-8)
    return (vecs * vals.sqrt()) @ vecs.T, (vecs / vals.sqrt()) @ vecs.T


def _error_weights(wo: torch.Tensor, query_second: torch.Tensor, value_cov: torch.Tensor, shape: SourceShape,
                   rot_nope: torch.Tensor) -> torch.Tensor:
    """Metric G on [K_nope ; V] errors so that e^T G e approximates the attention output error (CARE-style).

    Values: head h reads V of its KV group g through W_O^h, so G_v[g] = sum_h W_O^h^T W_O^h. Keys: an error e
    moves head h's score by q_h . e / sqrt(hd); to first order the output moves by that times the spread
    of W_O^h V, so G_k = sum_h R_g E[q_h q_h^T] R_g^T * E||W_O^h (V - E V)||^2 / hd (R_g: the no-RoPE rows
    of the key rotation for group g). This weights keys against values without a free balance factor.
    `query_second` [h, hd, hd] is E[q_h q_h^T], `value_cov` [n_kv, hd, hd] Cov[V_g].
    """
    hd, nkv, nh, d = shape.head_dim, shape.n_kv_heads, shape.n_heads, shape.d_model
    group = nh // nkv
    wo = wo.view(d, nh, hd)
    g_k = torch.zeros(rot_nope.shape[0], rot_nope.shape[0], dtype=torch.float64)
    g_v = torch.zeros(nkv * hd, nkv * hd, dtype=torch.float64)
    for h in range(nh):
        g = h // group
        spread = torch.trace(wo[:, h] @ value_cov[g] @ wo[:, h].T)
        r = rot_nope[:, g * hd:(g + 1) * hd]
        g_k += r @ query_second[h] @ r.T * (spread / hd)
        g_v[g * hd:(g + 1) * hd, g * hd:(g + 1) * hd] += wo[:, h].T @ wo[:, h]
    return torch.block_diag(g_k, g_v)


def _moments(kv: dict[str, torch.Tensor], p: dict[str, torch.Tensor], shape: SourceShape,
             stats: LayerStats) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[q_h q_h^T] [h, hd, hd], Cov[V_g] [n_kv, hd, hd]) from a layer's statistics: of x for linear queries
    and values, or read directly for normalized ones (`stats.queries`, u = [k^ ; v])."""
    hd, nkv, nh = shape.head_dim, shape.n_kv_heads, shape.n_heads
    m, mean = stats.second_moment, stats.mean
    cov = m - torch.outer(mean, mean)
    wv = kv["wv"].view(nkv, hd, -1)
    value_cov = torch.stack([wv[g] @ cov @ wv[g].T for g in range(nkv)])
    if stats.queries is not None:
        return stats.queries, value_cov
    wq, bq = p["wq"].view(nh, hd, -1), p["bq"].view(nh, hd)
    query_second = []
    for h in range(nh):
        q_mean = wq[h] @ mean
        query_second.append(wq[h] @ m @ wq[h].T + torch.outer(q_mean, bq[h]) + torch.outer(bq[h], q_mean)
                            + torch.outer(bq[h], bq[h]))
    return torch.stack(query_second), value_cov


def normalized_inputs(shape: SourceShape, d_rope: int) -> bool:
    """Whether a layer's latent reads normalized keys and values (per-head q/k norm, keys compressed)."""
    return shape.family.qk_norm and d_rope < shape.n_kv_heads * shape.head_dim


def _normalized_kv(shape: SourceShape) -> dict[str, torch.Tensor]:
    """Keys and values as maps of u = [k^ ; v]: selections, no biases (the source's run before the norm)."""
    width = shape.n_kv_heads * shape.head_dim
    eye, zero = torch.eye(width, dtype=torch.float64), torch.zeros(width, width, dtype=torch.float64)
    return {"wk": torch.cat([eye, zero], 1), "wv": torch.cat([zero, eye], 1),
            "bk": torch.zeros(width, dtype=torch.float64), "bv": torch.zeros(width, dtype=torch.float64)}


def _inputs(weighted: torch.Tensor, m: torch.Tensor, mean: torch.Tensor,
            stats: LayerStats | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(beta, E[x'], Cov[beta x']): the weighted targets W A x as a linear map beta of the latent's input x'.

    x' is the layer's own input x (beta = W A: weighted PCA) or, with sequential statistics, its input after
    the converted layers before it; beta then regresses the source's W A x on x', so the fit also undoes
    the drift of the earlier layers.
    """
    if stats is None or stats.fed is None:
        return weighted, mean, weighted @ (m - torch.outer(mean, mean)) @ weighted.T
    fed = stats.fed
    fed_cov = fed.second_moment - torch.outer(fed.mean, fed.mean)
    n = fed_cov.shape[0]
    fed_cov = fed_cov + 1e-6 * torch.trace(fed_cov) / n * torch.eye(n, dtype=torch.float64)  # ridge for solve
    beta = weighted @ torch.linalg.solve(fed_cov, (stats.cross - torch.outer(mean, fed.mean)).T).T
    return beta, fed.mean, beta @ fed_cov @ beta.T


def convert_attention(p: dict[str, torch.Tensor], shape: SourceShape, d_c: int, d_rope: int, method: str,
                      stats: LayerStats | None, rot: torch.Tensor, rope_scaling: float = 1.0) -> dict[str, torch.Tensor]:
    """MLAAttention weights (float32) for one source layer's q/k/v/o weights and biases.

    `rot` is the layer's key rotation from `_key_rotations` (its first d_rope rows stay RoPE'd).
    `rope_scaling` is the source's RoPE attention factor (YaRN's mscale): its cos/sin tables scale queries
    and keys by it, so every score by its square. The runtime's tables do the same for the RoPE'd part;
    the no-RoPE part gets the square folded into its queries here. For per-head q/k-normalized sources
    with compressed keys (`normalized_inputs`), the latent and the RoPE'd key are maps of u = [k^ ; v] and
    the queries of q^, all read from `pre`'s normalized output `[k^ | v | q^]`.
    """
    hd, nkv, nh = shape.head_dim, shape.n_kv_heads, shape.n_heads
    group = nh // nkv
    normed = normalized_inputs(shape, d_rope)
    kv = _normalized_kv(shape) if normed else p  # keys and values as maps of the latent's input
    d = kv["wk"].shape[1]
    calibrated = method == "pca"
    m = stats.second_moment if calibrated else torch.eye(d, dtype=torch.float64)
    mean = stats.mean if calibrated else torch.zeros(d, dtype=torch.float64)
    rot_rope, rot_nope = rot[:d_rope], rot[d_rope:]
    # queries as maps of what they read: x (wq, bq), or each head's q^ (the identity, no bias)
    wq = torch.eye(hd, dtype=torch.float64).expand(nh, hd, hd) if normed else p["wq"].view(nh, hd, -1)
    bq = torch.zeros(nh, hd, dtype=torch.float64) if normed else p["bq"].view(nh, hd)
    out: dict[str, torch.Tensor] = {}
    if d_rope:
        blocks = [rot_rope[:, (h // group) * hd:(h // group + 1) * hd] for h in range(nh)]  # [d_rope, hd] each
        q_rope = [b @ wq[h] for h, b in enumerate(blocks)]
        out["q_rope.weight"] = torch.block_diag(*q_rope) if normed else torch.cat(q_rope)
        out["q_rope.bias"] = torch.cat([b @ bq[h] for h, b in enumerate(blocks)])
        out["k_rope.weight"] = rot_rope @ kv["wk"]
        out["k_rope.bias"] = rot_rope @ kv["bk"]
    n_nope = rot_nope.shape[0]
    stacked = torch.cat([rot_nope @ kv["wk"], kv["wv"]])  # [n_nope + n_kv, d]
    if calibrated:
        query_second, value_cov = _moments(kv, p, shape, stats)  # the no-RoPE queries carry rope_scaling^2:
        w, w_inv = _sqrt_and_inv(_error_weights(p["wo"], query_second * rope_scaling ** 4, value_cov, shape, rot_nope))
    else:
        w = w_inv = torch.eye(stacked.shape[0], dtype=torch.float64)
    # Weighted, centered reduced-rank fit: minimizes E||W (z - up down x')||^2, z = stacked x; the mean's
    # residual is a constant key (dropped exactly) plus a constant value (a bias).
    beta, in_mean, fit_cov = _inputs(w @ stacked, m, mean, stats if calibrated else None)
    u = eigh_descending(fit_cov)[1][:, :d_c]
    up, down = w_inv @ u, u.T @ beta
    v_offset = (stacked @ mean - up @ (down @ in_mean))[n_nope:]
    out["kv_down.weight"] = down
    out["v_up"] = up[n_nope:].reshape(nkv, hd, d_c)
    if n_nope:
        out["q_nope.weight"] = (torch.block_diag(*wq) if normed else p["wq"]) * rope_scaling ** 2
        out["q_nope.bias"] = bq.reshape(-1) * rope_scaling ** 2
        out["k_up"] = torch.stack([rot_nope[:, g * hd:(g + 1) * hd].T @ up[:n_nope] for g in range(nkv)])
    bv = (kv["bv"] + v_offset).view(nkv, hd).repeat_interleave(group, dim=0).reshape(-1)
    out["o_proj.weight"] = p["wo"]
    out["o_proj.bias"] = p["bo"] + p["wo"] @ bv
    if normed:  # the runtime's projections read pre's output [k^ | v | q^]
        queries = nh * hd
        for name in ("kv_down.weight", "k_rope.weight"):
            out[name] = F.pad(out[name], (0, queries))
        for name in ("q_rope.weight", "q_nope.weight"):
            out[name] = F.pad(out[name], (d, 0))
        out["pre.weight"] = torch.cat([p["wk"], p["wv"], p["wq"]])
        out["pre.bias"] = torch.cat([p["bk"], p["bv"], p["bq"]])
    return {k: v.float().contiguous() for k, v in out.items()}


def _key_rotations(sources: list[dict[str, torch.Tensor]], shape: SourceShape, d_rope: int,
                   stats: list[LayerStats] | None, inv_freq: torch.Tensor | None,
                   length: int) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Per layer, the RoRoPE key rotation (RoPE'd rows first), and the RoPE slots' frequencies for all layers.

    Keys stay as they are (identity) when every key keeps RoPE or the model has none.
    """
    hd, nkv = shape.head_dim, shape.n_kv_heads
    if not shape.has_rope or d_rope == nkv * hd:
        return [torch.eye(nkv * hd, dtype=torch.float64)] * len(sources), inv_freq
    normed = normalized_inputs(shape, d_rope)
    keys = [_normalized_kv(shape)["wk"] if normed else p["wk"] for p in sources]  # maps of the latent's input
    eye = torch.eye(keys[0].shape[1], dtype=torch.float64)
    mixes = [rorope_mixes(w_k, eye if stats is None else s.second_moment, nkv, hd)
             for w_k, s in zip(keys, stats or [None] * len(sources))]
    unit = min(d_rope, hd)
    slots = rope_slots([e for e, _ in mixes], inv_freq, d_rope // unit, length, unit // 2)
    return [rorope_rotation(m, slots, d_rope // unit, hd) for _, m in mixes], inv_freq[slots]


@torch.no_grad()
def _load_encoder_attention(model: torch.nn.Module, arch: Family, i: int, attn: dict[str, torch.Tensor]) -> None:
    """Make layer i of a source BERT compute the converted attention (K = k_up C x, V = v_up C x, biases moved)."""
    prefix = arch.layer.format(i=i)
    k, v, o = (model.get_submodule(prefix + name) for name in (arch.k, arch.v, arch.o))
    down = attn["kv_down.weight"]
    k.weight.copy_(torch.cat(list(attn["k_up"] @ down)))
    v.weight.copy_(torch.cat(list(attn["v_up"] @ down)))
    k.bias.zero_()
    v.bias.zero_()
    o.bias.copy_(attn["o_proj.bias"])


def _rename(state: dict[str, torch.Tensor], arch: Family, n_layers: int) -> dict[str, torch.Tensor]:
    """Non-attention weights under the runtime's names."""
    attn = tuple(arch.layer.format(i=i) + getattr(arch, n) + "." for i in range(n_layers) for n in "qkvo")
    out = {}
    for key, value in state.items():
        if key.startswith(attn) or re.search(arch.drop, key):
            continue
        for pattern, repl in arch.renames:
            new, hits = re.subn(pattern, repl, key)
            if hits:
                out[new] = value.float().contiguous()
                break
        else:
            raise ConversionError(f"unexpected weight {key!r} in the source model")
    return out


def _load_source(hf_dir: Path, shape: SourceShape):
    """The source model in float32 (eval mode) and its tokenizer."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    cls = AutoModel if shape.family.kind == "encoder" else AutoModelForCausalLM
    model = cls.from_pretrained(hf_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(hf_dir)


def _stats(model, tokenizer, shape: SourceShape, hf_dir: Path, config: MLAConfig, d_rope: int,
           stats_cache: Path | None) -> list[LayerStats]:
    """Calibration statistics (of the attention input, or of normalized keys, values and queries), read
    from / written to `stats_cache` when given."""
    normed = normalized_inputs(shape, d_rope)
    key = cache_key(hf_dir, config.calibration) + ("-normed" if normed else "")
    path = None if stats_cache is None else Path(stats_cache) / f"stats-{key}.pt"
    if path is not None and path.exists():
        return load_stats(path)
    arch = shape.family
    if normed:
        attn = [model.get_submodule(arch.layer.format(i=i) + "self_attn") for i in range(shape.n_layers)]
        stats = collect_normed_stats(model, tokenizer, [(a.k_norm, a.v_proj, a.q_norm) for a in attn],
                                     shape.n_kv_heads, shape.n_heads, shape.head_dim, config.calibration)
    else:
        inputs = [model.get_submodule(arch.layer.format(i=i) + (arch.fused_qkv or arch.q))
                  for i in range(shape.n_layers)]
        stats = collect_stats(model, tokenizer, inputs, config.calibration)
    if path is not None:
        save_stats(stats, path)
    return stats


_COPY = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
         "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "generation_config.json",
         "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "LICENSE", "NOTICE")


def convert(hf_dir: str | Path, config: MLAConfig, out_dir: str | Path, stats_cache: str | Path | None = None) -> Path:
    """Convert `hf_dir` to MLA per `config`, write it to `out_dir` and return that path.

    `stats_cache` (a directory) lets repeated conversions of one model reuse calibration statistics.
    Raises ConversionError before any work for bad input.
    """
    started = time.perf_counter()
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    shape = read_source_shape(hf_dir)
    d_c, d_rope = resolve_widths(shape, config)
    arch = shape.family
    if config.method == "pca":  # fail on an unreadable calibration source before loading anything
        calibration_texts(config.calibration)
    model, tokenizer = _load_source(hf_dir, shape)
    stats = _stats(model, tokenizer, shape, hf_dir, config, d_rope, stats_cache) if config.method == "pca" else None
    state = split_fused({k: v.detach() for k, v in model.state_dict().items()}, shape)
    if arch.kind == "decoder" and "lm_head.weight" in state and model.config.tie_word_embeddings:
        del state["lm_head.weight"]
    weights = _rename(state, arch, shape.n_layers)
    sources = [_attention_weights(state, arch, i) for i in range(shape.n_layers)]
    inv_freq = model.model.rotary_emb.inv_freq.detach().double() if shape.has_rope else None
    rope_scaling = float(model.model.rotary_emb.attention_scaling) if shape.has_rope else 1.0
    rots, inv_freq = _key_rotations(sources, shape, d_rope, stats, inv_freq, config.calibration.max_tokens)
    # Encoders calibrate sequentially: their converted attention is a BERT attention with low-rank K/V weights.
    fed = copy.deepcopy(model) if stats is not None and arch.kind == "encoder" else None
    for i in range(shape.n_layers):
        layer_stats = None if stats is None else stats[i]
        if fed is not None:
            q_name = arch.layer.format(i=i) + arch.q
            layer_stats = collect_fed_stats(model, fed, tokenizer, model.get_submodule(q_name),
                                            fed.get_submodule(q_name), config.calibration, layer_stats)
        attn = convert_attention(sources[i], shape, d_c, d_rope, config.method, layer_stats, rots[i], rope_scaling)
        if fed is not None:
            _load_encoder_attention(fed, arch, i, attn)
        weights.update({f"layers.{i}.attn.{k}": v for k, v in attn.items()})
    decoder = {}
    if arch.kind == "decoder":
        weights["rope_inv_freq"] = inv_freq.float()
        kernel_head_dim_v, kernel_d_rope = kernel_dims(d_c, d_rope)
        decoder = {"rope_scaling": rope_scaling, "tie_word_embeddings": bool(model.config.tie_word_embeddings),
                   "kernel_head_dim_v": kernel_head_dim_v, "kernel_d_rope": kernel_d_rope,
                   "qk_norm": arch.qk_norm}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    # safetensors writes a private temporary file (mode 0600) and renames it; the weights are meant to be
    # shared (a volume other jobs read, MLflow's copy), so they get the usual 0644.
    (out_dir / "model.safetensors").chmod(0o644)
    for name in _COPY:
        if (hf_dir / name).is_file():
            shutil.copy2(hf_dir / name, out_dir / name)
    if (hf_dir / "1_Pooling").is_dir():
        shutil.copytree(hf_dir / "1_Pooling", out_dir / "1_Pooling", dirs_exist_ok=True)
    MLAModelConfig(
        architecture=shape.arch, kind=arch.kind, d_c=d_c, d_rope=d_rope, n_heads=shape.n_heads,
        n_kv_heads=shape.n_kv_heads, head_dim=shape.head_dim,
        has_nope=d_rope < shape.n_kv_heads * shape.head_dim if shape.has_rope else True,
        kv_values_per_token_before=shape.kv_values_per_token, kv_values_per_token_after=d_c + d_rope,
        conversion={**config.to_dict(), "source": str(hf_dir.resolve()),
                    "seconds": round(time.perf_counter() - started, 3)},
        **decoder).write(out_dir)
    return out_dir
