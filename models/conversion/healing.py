"""Healing: a short distillation of a converted model from its source, as TransMLA, MHA2MLA and X-EcoMLA do.

Only the converted attention layers train (every MLAAttention weight: latent down/up projections, RoPE key
mixes, queries, output); embeddings, norms, MLPs and the head stay frozen. Decoders minimize the KL divergence
of the student's next-token distribution from the source's on windows of calibration text; encoders
minimize 1 - cosine of the mean-pooled embeddings plus 1 - cosine of every token's hidden state. float32
on CPU, bf16 autocast on GPU (trained weights and AdamW states stay float32). The runtime modules fuse their
projections and run without gradients, so training uses its own differentiable forward over the same
parameters (`decoder_logits`, `encoder_hidden`; a test holds them equal to the runtime's). A checkpoint
(trained weights, optimizer, step) is written every `heal_eval_every` steps; a run started again on the same
converted weights resumes from it. The healed weights replace the directory's `model.safetensors`.
"""
from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mlabatch.models.conversion.config import HealConfig
from mlabatch.models.conversion.fidelity import _mean_pool
from mlabatch.models.device import pick_device
from mlabatch.models.mla_attention import MLAAttention
from mlabatch.models.mla_config import MLAModelConfig, read_converted
from mlabatch.models.mla_decoder import MLADecoder
from mlabatch.models.mla_encoder import MLAEncoder
from mlabatch.models.rope import RopeTables, rope_tables

CHECKPOINT_FILE = "heal-checkpoint.pt"
HELDOUT_WINDOWS = 8  # held-out windows a decoder is scored on; encoders score every held-out text, this many a batch
SEED = 0  # data order and nothing else: the model starts from the converted weights
WARMUP_SHARE = 0.05  # of the steps, linear warm-up; then cosine decay to FINAL_LR_SHARE of the peak
FINAL_LR_SHARE = 0.1
CLIP_NORM = 1.0


@dataclass
class HealResult:
    """What a healing run did: steps and tokens trained, and the held-out metric before and after."""

    steps: int
    tokens: int
    seconds: float
    metric: str  # "kl" (decoders, nats per token, lower is better) or "cosine" (encoders, higher is better)
    heldout_before: float
    heldout_after: float
    resumed_from: int = 0
    history: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


# ---- differentiable forwards over the runtime modules' parameters ----

def _rotate(x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
    """Rotate-half RoPE of x [b, t, n, w] per chunk of the table's width (what `rope_` does in place)."""
    cos, sin = rope
    width = cos.shape[-1]
    x = x.unflatten(-1, (-1, width))
    return (x * cos.unsqueeze(-2) + x.roll(width // 2, -1) * sin.unsqueeze(-2)).flatten(-2)


def _head_norm(x: torch.Tensor, norm: torch.nn.RMSNorm, head_dim: int) -> torch.Tensor:
    """Per-head RMSNorm of x [..., n * head_dim] in float32 (Qwen3's q/k norm, as `MLAAttention._qk_norm`)."""
    heads = x.unflatten(-1, (-1, head_dim)).float()
    heads = heads * torch.rsqrt(heads.pow(2).mean(-1, keepdim=True) + norm.eps)
    return (norm.weight * heads.to(x.dtype)).flatten(-2)


def attention(attn: MLAAttention, h: torch.Tensor, rope: RopeTables | None, mask: torch.Tensor | None = None,
              causal: bool = False) -> torch.Tensor:
    """MLAAttention's non-absorbed output [b, t, d_model] for inputs h [b, t, d_model], with gradients."""
    s = attn.shape
    group = s.n_heads // s.n_kv_heads
    if s.normed_inputs:  # Qwen3 with compressed keys: the projections read [k^ | v | q^] (as MLAAttention.project)
        u = attn.pre(h)
        keys, values, queries = u.split([s.n_kv_heads * s.head_dim] * 2 + [s.n_heads * s.head_dim], -1)
        h = torch.cat([_head_norm(keys, attn.k_norm, s.head_dim), values,
                       _head_norm(queries, attn.q_norm, s.head_dim)], -1)
    c = attn.kv_down(h)
    v = torch.einsum("btc,gdc->btgd", c, attn.v_up).repeat_interleave(group, dim=2)
    q, k = [], []
    if s.has_nope:
        q.append(attn.q_nope(h).unflatten(-1, (s.n_heads, s.head_dim)))
        k.append(torch.einsum("btc,gdc->btgd", c, attn.k_up).repeat_interleave(group, dim=2))
    if s.d_rope:
        q_rope, k_rope = attn.q_rope(h).unflatten(-1, (s.n_heads, s.d_rope)), attn.k_rope(h)[:, :, None]
        if s.qk_norm_eps is not None and not s.normed_inputs:
            q_rope, k_rope = _head_norm(q_rope, attn.q_norm, s.head_dim), _head_norm(k_rope, attn.k_norm, s.head_dim)
        q.append(_rotate(q_rope, rope))
        k.append(_rotate(k_rope, rope).expand(-1, -1, s.n_heads, -1))
    q, k = torch.cat(q, -1), torch.cat(k, -1)
    attn_mask = None if mask is None else mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=attn_mask, is_causal=causal, scale=attn.scale)
    return attn.o_proj(out.transpose(1, 2).flatten(2))


def decoder_logits(model: MLADecoder, ids: torch.Tensor) -> torch.Tensor:
    """Logits [b, t, vocab] of an unfused MLADecoder for token ids [b, t], with gradients."""
    x = model.embed_tokens(ids)
    positions = torch.arange(ids.shape[1], device=ids.device)[None]
    rope = rope_tables(positions, model.rope_inv_freq, model.mla.rope_scaling, x.dtype)
    for layer in model.layers:
        x = x + attention(layer.attn, layer.attn_norm(x), rope, causal=True)
        h = layer.mlp_norm(x)
        x = x + layer.mlp.down_proj(F.silu(layer.mlp.gate_proj(h)) * layer.mlp.up_proj(h))
    return model.lm_head(model.norm(x))


def encoder_hidden(model: MLAEncoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states [b, t, d] of an unfused MLAEncoder, with gradients."""
    x = model.embeddings(ids)
    keep = mask.bool()
    for layer in model.layers:
        x = layer.attn_norm(x + attention(layer.attn, x, None, mask=keep))
        x = layer.ffn_norm(x + layer.ffn_out(layer.act(layer.ffn_in(x))))
    return x


# ---- data ----

def _windows(tokenizer, texts: list[str], length: int) -> torch.Tensor:
    """Texts tokenized, joined by the end-of-text token and cut into windows [n, length] (decoders)."""
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [sep]
    n = len(stream) // length
    if n == 0:
        raise ValueError(f"healing needs at least {length} tokens of text, got {len(stream)}")
    return torch.tensor(stream[: n * length]).view(n, length)


def _batch_indices(step: int, batch: int, n: int) -> torch.Tensor:
    """The examples of a step: epochs of seeded permutations, so a resumed run sees the same batches."""
    first = step * batch
    out = []
    for k in range(first, first + batch):
        epoch, pos = divmod(k, n)
        out.append(torch.randperm(n, generator=torch.Generator().manual_seed(SEED + epoch))[pos].item())
    return torch.tensor(out)


def _lr_share(step: int, steps: int) -> float:
    """Learning rate at `step` as a share of the peak: linear warm-up, then cosine decay."""
    warm = max(1, round(steps * WARMUP_SHARE))
    if step < warm:
        return (step + 1) / warm
    done = (step - warm) / max(1, steps - warm)
    return FINAL_LR_SHARE + (1 - FINAL_LR_SHARE) * 0.5 * (1 + math.cos(math.pi * done))


# ---- the two kinds of student ----

def _student_and_teacher(src_dir: Path, mla_dir: Path, kind: str, device: torch.device):
    """(student, teacher, tokenizer): the converted model as written (float32, on the CPU until the loop moves
    it), the frozen source in bf16 on GPU or float32 on CPU, and the source's tokenizer."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    mla, cfg, state = read_converted(mla_dir, kind)
    if kind == "decoder":
        student = MLADecoder(cfg, mla)
        if mla.tie_word_embeddings:
            state["lm_head.weight"] = state["embed_tokens.weight"]
    else:
        student = MLAEncoder(cfg, mla)
    student.load_state_dict(state)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    teacher = (AutoModelForCausalLM if kind == "decoder" else AutoModel).from_pretrained(src_dir, dtype=dtype)
    return student, teacher.to(device).eval(), AutoTokenizer.from_pretrained(src_dir)

class _Task(Protocol):
    """What differs between decoders and encoders: teacher, student, data, loss and held-out metric."""

    metric: str
    student: torch.nn.Module

    def loss(self, step: int, batch: int) -> tuple[torch.Tensor, int]:
        """(loss, tokens) of one training batch."""

    def heldout(self) -> float:
        """The held-out metric of the current student."""


class _DecoderTask:
    metric = "kl"

    def __init__(self, src_dir: Path, mla_dir: Path, config: HealConfig, texts: list[str], heldout: list[str],
                 device: torch.device) -> None:
        self.student, self.teacher, tokenizer = _student_and_teacher(src_dir, mla_dir, "decoder", device)
        self.train = _windows(tokenizer, texts, config.heal_seq_tokens)
        self.held = _windows(tokenizer, heldout, config.heal_seq_tokens)[:HELDOUT_WINDOWS]
        self.device = device

    def _kl(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.device)
        with torch.no_grad():
            target = F.log_softmax(self.teacher(ids).logits.float(), -1)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = decoder_logits(self.student, ids)
        return F.kl_div(F.log_softmax(logits.float(), -1).flatten(0, 1), target.flatten(0, 1), log_target=True,
                        reduction="batchmean")

    def loss(self, step: int, batch: int) -> tuple[torch.Tensor, int]:
        ids = self.train[_batch_indices(step, batch, len(self.train))]
        return self._kl(ids), ids.numel()

    @torch.no_grad()
    def heldout(self) -> float:
        return sum(self._kl(w[None]).item() for w in self.held) / len(self.held)


class _EncoderTask:
    metric = "cosine"

    def __init__(self, src_dir: Path, mla_dir: Path, config: HealConfig, texts: list[str], heldout: list[str],
                 device: torch.device) -> None:
        self.student, self.teacher, self.tokenizer = _student_and_teacher(src_dir, mla_dir, "encoder", device)
        self.texts, self.held, self.length, self.device = texts, heldout, config.heal_seq_tokens, device

    def _pair(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(teacher hidden, student hidden, mask) of a batch of texts."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.length, return_tensors="pt")
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        with torch.no_grad():
            target = self.teacher(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            hidden = encoder_hidden(self.student, ids, mask)
        return target, hidden.float(), mask

    def loss(self, step: int, batch: int) -> tuple[torch.Tensor, int]:
        picked = [self.texts[i] for i in _batch_indices(step, batch, len(self.texts)).tolist()]
        target, hidden, mask = self._pair(picked)
        pooled = 1 - (_mean_pool(target, mask) * _mean_pool(hidden, mask)).sum(-1).mean()
        keep = mask.bool()
        tokens = 1 - F.cosine_similarity(target[keep], hidden[keep], dim=-1).mean()
        return pooled + tokens, int(mask.sum())

    @torch.no_grad()
    def heldout(self) -> float:
        cos = []
        for i in range(0, len(self.held), HELDOUT_WINDOWS):
            target, hidden, mask = self._pair(self.held[i:i + HELDOUT_WINDOWS])
            cos.append((_mean_pool(target, mask) * _mean_pool(hidden, mask)).sum(-1))
        return torch.cat(cos).mean().item()


# ---- the loop ----

def _fingerprint(mla_dir: Path, config: HealConfig) -> str:
    """Key of the starting weights and the settings: a checkpoint is resumed only for the same pair."""
    h = hashlib.sha256(config.model_dump_json().encode())
    with open(mla_dir / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _trained(student: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The attention parameters (by state-dict name), marked trainable; every other parameter is frozen."""
    for p in student.parameters():
        p.requires_grad_(False)
    out = {}
    for name, module in student.named_modules():
        if isinstance(module, MLAAttention):
            for pname, p in module.named_parameters():
                p.requires_grad_(True)
                out[f"{name}.{pname}"] = p
    return out


def _save_weights(mla_dir: Path, trained: dict[str, torch.nn.Parameter], result: HealResult,
                  config: HealConfig) -> None:
    """Write the healed attention weights into model.safetensors and record the healing in mla_config.json."""
    path = mla_dir / "model.safetensors"
    state = load_file(str(path))
    for name, p in trained.items():
        state[name] = p.detach().to("cpu", torch.float32).contiguous()
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.chmod(0o644)  # shared like convert's output
    tmp.replace(path)
    mla = MLAModelConfig.read(mla_dir)
    record = {**config.model_dump(), "tokens": result.tokens, "seconds": round(result.seconds, 3),
              "metric": result.metric, "heldout_before": result.heldout_before, "heldout_after": result.heldout_after}
    mla.model_copy(update={"conversion": {**mla.conversion, "healing": record}}).write(mla_dir)


def heal(src_dir: str | Path, mla_dir: str | Path, config: HealConfig, texts: list[str], heldout: list[str],
         checkpoint_dir: str | Path | None = None, device: str | torch.device = "auto",
         progress: bool = True) -> HealResult:
    """Distill the converted model in `mla_dir` from its source `src_dir` for `config.heal_steps` steps on `texts`.

    `heldout` texts give the metric shown in the progress bar and returned. With `checkpoint_dir`, state is
    saved every `heal_eval_every` steps and a run on the same starting weights and settings resumes from it.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    src_dir, mla_dir, device = Path(src_dir), Path(mla_dir), pick_device(device)
    kind = MLAModelConfig.read(mla_dir).kind
    task: _Task = (_DecoderTask if kind == "decoder" else _EncoderTask)(src_dir, mla_dir, config, texts, heldout, device)
    student = task.student.to(device).train()
    trained = _trained(student)
    optimizer = torch.optim.AdamW(trained.values(), lr=config.heal_lr, betas=(0.9, 0.95), weight_decay=0.0)
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_FILE
    key = _fingerprint(mla_dir, config)
    state = torch.load(ckpt, map_location=device, weights_only=True) if ckpt is not None and ckpt.is_file() else None
    if state is not None and state["key"] == key:
        with torch.no_grad():
            for name, p in trained.items():
                p.copy_(state["trained"][name])
        optimizer.load_state_dict(state["optimizer"])
        step, tokens, before, history = state["step"], state["tokens"], state["heldout_before"], state["history"]
    else:
        step, tokens, before, history = 0, 0, task.heldout(), []
    result = HealResult(config.heal_steps, tokens, 0.0, task.metric, before, before, step, [tuple(h) for h in history])
    bar = tqdm(total=config.heal_steps, initial=step, desc=f"healing ({task.metric})", disable=not progress)
    bar.set_postfix(heldout=f"{(result.history[-1][1] if result.history else before):.5f}")
    while step < config.heal_steps:
        for group in optimizer.param_groups:
            group["lr"] = config.heal_lr * _lr_share(step, config.heal_steps)
        loss, n = task.loss(step, config.heal_batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained.values(), CLIP_NORM)
        optimizer.step()
        step, result.tokens = step + 1, result.tokens + n
        bar.update(1)
        if step % config.heal_eval_every == 0 or step == config.heal_steps:
            result.history.append((step, task.heldout()))
            bar.set_postfix(loss=f"{loss.item():.5f}", heldout=f"{result.history[-1][1]:.5f}")
            if ckpt is not None:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                tmp = ckpt.with_name(ckpt.name + ".tmp")
                torch.save({"key": key, "step": step, "tokens": result.tokens, "heldout_before": before,
                            "history": result.history, "optimizer": optimizer.state_dict(),
                            "trained": {k: p.detach() for k, p in trained.items()}}, tmp)
                tmp.replace(ckpt)
    bar.close()
    result.heldout_after = result.history[-1][1] if result.history else before
    result.seconds = time.perf_counter() - started
    _save_weights(mla_dir, trained, result, config)
    return result
