"""The batch generation engine: prompts in, continuations out, on an MLA decoder and its paged latent cache.

Each loop iteration admits waiting prompts (prefill, batched by a token budget), then runs one decode
step for the whole running batch: one `flash_mla_with_kvcache` call per layer, replayed from a CUDA
graph on GPU when the batch fits a captured bucket. Finished sequences free their blocks at once, so
new prompts join while others are still decoding (continuous batching). While the device runs a step,
the host already queues the next one (its input tokens never leave the device) and only then reads the
step's tokens back, so the host's bookkeeping overlaps the device's work; a row that ends by EOS or a
stop string thus computes one extra token, which is dropped.

Finish reasons: "eos" (the model's end token), "stop" (a stop string; the text ends before it),
"length" (max_new_tokens), "context" (prompt + generated reached the context limit).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence as Seq

import numpy as np
import torch
from tokenizers import Tokenizer

from mlabatch.models.decode_graphs import DecodeGraphs
from mlabatch.models.gen_scheduler import Scheduler, Sequence
from mlabatch.models.mla_decoder import MLADecoder
from mlabatch.models.paged_cache import BLOCK
from mlabatch.models.sampling import SamplingParams, sample

CPU_BLOCKS = 256  # default pool on CPU: 16k tokens


@dataclass(frozen=True)
class EngineConfig:
    """Engine sizing: the pool is `num_blocks` pages, or on GPU `memory_fraction` of free memory."""

    max_batch: int = 256
    prefill_token_budget: int = 8192
    num_blocks: int | None = None
    memory_fraction: float = 0.5
    max_context: int | None = None  # None: the model's max_position_embeddings (capped by the pool)
    cuda_graphs: bool = True
    chat_template: bool = False  # wrap each text prompt as one user message in the model's chat template


@dataclass
class Output:
    """One continuation; `truncated` says the prompt was cut (its beginning dropped) to fit the context."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str
    truncated: bool


@dataclass
class EngineStats:
    """Counters of the last generate() call."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    preemptions: int = 0
    graph_steps: int = 0
    overlapped_steps: int = 0  # decode steps queued before the previous step's tokens were read
    seconds: float = 0.0
    prefill_seconds: float = 0.0  # wall time inside prefill (the rest of `seconds` is decode and bookkeeping)
    batch_sizes: list[int] = field(default_factory=list)


def _pinned(t: torch.Tensor) -> torch.Tensor:
    """Page-locked copy of a host tensor (so its upload is asynchronous), where CUDA is present."""
    return t.pin_memory() if torch.cuda.is_available() else t


class _Launched:
    """A decode step queued on the device: its rows and sampled tokens, copied back to the host asynchronously."""

    def __init__(self, rows: list[Sequence], tokens: torch.Tensor) -> None:
        self.rows, self.tokens = rows, tokens
        self._host = tokens.to("cpu", non_blocking=True) if tokens.is_cuda else tokens
        self._ready = torch.cuda.Event() if tokens.is_cuda else None
        if self._ready is not None:
            self._ready.record()

    def host_tokens(self) -> list[int]:
        """The sampled tokens, once the device has produced them."""
        if self._ready is not None:
            self._ready.synchronize()
        return self._host.tolist()


def eos_ids(model_dir: Path) -> set[int]:
    """End-of-sequence token ids from generation_config.json, else config.json."""
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        if path.is_file():
            eos = json.loads(path.read_text()).get("eos_token_id")
            if eos is not None:
                return set(eos) if isinstance(eos, list) else {eos}
    return set()


def pool_blocks(model: MLADecoder, config: EngineConfig) -> int:
    """Blocks for the pool: the configured count, or a fraction of free GPU memory, or CPU_BLOCKS."""
    if config.num_blocks is not None:
        return config.num_blocks
    p = model.embed_tokens.weight
    if p.device.type != "cuda":
        return CPU_BLOCKS
    free, _ = torch.cuda.mem_get_info(p.device)
    per_block = len(model.layers) * BLOCK * model.cache_width * p.element_size()
    return max(int(free * config.memory_fraction) // per_block, 2)


class Generator:
    """Continues prompts with an MLA decoder; create once per device and reuse (the pool is allocated once)."""

    def __init__(self, model: MLADecoder, tokenizer: Tokenizer, model_dir: str | Path,
                 config: EngineConfig = EngineConfig()) -> None:
        self.model, self.tokenizer, self.model_dir, self.config = model, tokenizer, Path(model_dir), config
        self.device = model.embed_tokens.weight.device
        self.eos = eos_ids(self.model_dir)
        self.cache = model.new_cache(pool_blocks(model, config))
        self.scratch = self.cache.add()  # one block that padded graph rows may write to
        self.cache.grow(self.scratch, 1)
        model_ctx = json.loads((self.model_dir / "config.json").read_text()).get("max_position_embeddings", 1 << 20)
        self.max_context = min(config.max_context or model_ctx, model_ctx, self.cache.num_free * BLOCK)
        self.table_width = -(-self.max_context // BLOCK)
        use_graphs = config.cuda_graphs and self.device.type == "cuda"
        self.graphs = DecodeGraphs(model, self.cache.kv, config.max_batch, self.table_width,
                                   self.cache.blocks(self.scratch)[0]) if use_graphs else None
        if self.graphs is not None:
            self.graphs.capture()
        self.stats = EngineStats()
        self._chat = None
        self._rows: list[Sequence] = []
        self._row_of: dict[int, int] = {}
        self._table = np.zeros((0, self.table_width), dtype=np.int32)

    # ---- prompts ----
    def _encode(self, prompt: str | list[int]) -> list[int]:
        if not isinstance(prompt, str):
            return list(prompt)
        if self.config.chat_template:
            prompt = self._chat_text(prompt)
            return self.tokenizer.encode(prompt, add_special_tokens=False).ids
        return self.tokenizer.encode(prompt).ids

    def _chat_text(self, prompt: str) -> str:
        if self._chat is None:
            from transformers import AutoTokenizer

            self._chat = AutoTokenizer.from_pretrained(self.model_dir)
            if not self._chat.chat_template:
                raise ValueError(f"{self.model_dir} has no chat template; turn the chat_template option off")
        return self._chat.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                              add_generation_prompt=True)

    def _sequence(self, index: int, prompt: str | list[int], params: SamplingParams) -> Sequence:
        ids = self._encode(prompt)
        if not ids:
            raise ValueError(f"prompt {index} has no tokens")
        keep = self.max_context - 1  # room for at least one new token
        truncated = len(ids) > keep
        return Sequence(index, ids[-keep:] if truncated else ids, params.with_seed(), self.max_context, truncated)

    # ---- the loop ----
    @torch.no_grad()
    def generate(self, prompts: Seq[str | list[int]], params: SamplingParams | Seq[SamplingParams] = SamplingParams()
                 ) -> list[Output]:
        """Continue every prompt (text or token ids); outputs in prompt order."""
        started = time.perf_counter()
        per_row = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(per_row) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(per_row)} sampling settings")
        seqs = [self._sequence(i, p, s) for i, p, s in zip(range(len(prompts)), prompts, per_row)]
        sched = Scheduler(self.cache, self.config.max_batch, self.config.prefill_token_budget)
        sched.add(seqs)
        self.stats = EngineStats(prompt_tokens=sum(len(s.prompt) for s in seqs))
        pending: _Launched | None = None
        while pending is not None or not sched.done:
            # The next step goes to the device before this one's tokens are read, so the host's
            # bookkeeping overlaps the device's work; admissions and preemptions wait for a quiet moment.
            following = self._continue(sched, pending) if pending is not None else None
            if pending is not None:
                self._read(sched, pending)
            pending = following
            if pending is None:
                tick = time.perf_counter()
                self._prefill(sched)
                self.stats.prefill_seconds += time.perf_counter() - tick
                if sched.running:
                    sched.reserve_decode_slots()
                    rows = list(sched.running)
                    tokens = torch.tensor([s.generated[-1] for s in rows]).to(self.device, non_blocking=True)
                    pending = self._launch(rows, sched.grown, tokens, lag=0)
        self.stats.preemptions = sched.preemptions
        self.stats.generated_tokens = sum(len(s.generated) for s in seqs)
        self.stats.seconds = time.perf_counter() - started
        return [self._output(s) for s in seqs]

    def _prefill(self, sched: Scheduler) -> None:
        admitted = sched.admit()
        if not admitted:
            return
        cache_ids, logits = self.model.prefill([s.prefill_ids() for s in admitted], self.cache)
        fresh = [i for i, s in enumerate(admitted) if not s.generated]  # recomputed ones already hold their token
        for seq, cache_id in zip(admitted, cache_ids):
            sched.start(seq, cache_id)
        if fresh:
            rows = [admitted[i] for i in fresh]
            self._accept(sched, rows, self._sample(logits[fresh], rows, lag=0).tolist())

    def _continue(self, sched: Scheduler, pending: _Launched) -> _Launched | None:
        """Launch the step after `pending` for its rows that surely go on, or None when the loop must pause.

        Rows ending by length or context after the pending token sit this step out; a row that turns out
        to end (EOS, stop string) with the pending token computes one token that is dropped.
        """
        keep = [r for r, s in enumerate(pending.rows) if s.finish_reason is None and not self._last_token(s)]
        rows = [pending.rows[r] for r in keep]
        if not rows or sched.can_admit(len(rows)) or not sched.try_reserve(rows):
            return None
        tokens = pending.tokens
        if len(rows) != len(pending.rows):
            tokens = tokens.index_select(0, torch.tensor(keep).to(self.device, non_blocking=True))
        self.stats.overlapped_steps += 1
        return self._launch(rows, sched.grown, tokens, lag=1)

    def _last_token(self, seq: Sequence) -> bool:
        """Whether the token in flight is `seq`'s last for length or context reasons."""
        return len(seq.generated) + 1 >= seq.params.max_new_tokens or seq.total + 1 >= seq.max_len

    def _launch(self, rows: list[Sequence], grown: list[Sequence], tokens: torch.Tensor, lag: int) -> _Launched:
        """Queue one decode step of `rows` (input `tokens` [b] on the device) and its sampling."""
        table = self._block_table(rows, grown)
        lengths = np.array([self.cache.length(s.cache_id) for s in rows], dtype=np.int64)
        pos = lengths - 1
        step = np.stack([pos, table[np.arange(len(rows)), pos // BLOCK], pos % BLOCK, lengths])
        step = _pinned(torch.from_numpy(step)).to(self.device, non_blocking=True)
        block_table = _pinned(torch.from_numpy(table)).to(self.device, non_blocking=True)
        if self.graphs is not None and self.graphs.fits(len(rows)):
            out = self.graphs.run(tokens, step, block_table)
            self.stats.graph_steps += 1
        else:
            width = int(max(len(self.cache.blocks(s.cache_id)) for s in rows))
            logits = self.model.decode_batch(tokens, step[0], (step[1], step[2]), block_table[:, :width],
                                             step[3].int(), self.cache.kv)
            out = logits, logits.argmax(-1)
        logits, greedy = out
        self.stats.decode_steps += 1
        self.stats.batch_sizes.append(len(rows))
        sampled = greedy.clone() if all(s.params.greedy for s in rows) else self._sample(logits, rows, lag)
        return _Launched(rows, sampled)

    def _read(self, sched: Scheduler, step: _Launched) -> None:
        """Wait for a launched step's tokens and accept them (rows that ended meanwhile drop theirs)."""
        rows, tokens = step.rows, step.host_tokens()
        live = [i for i, s in enumerate(rows) if s.finish_reason is None]
        self._accept(sched, [rows[i] for i in live], [tokens[i] for i in live])

    def _block_table(self, rows: list[Sequence], grown: list[Sequence]) -> np.ndarray:
        """int32 [b, table_width] block ids of `rows`: last step's table plus new blocks, rebuilt when rows change."""
        if rows != self._rows:  # identity comparison (Sequence has eq=False)
            self._rows, self._row_of = rows, {id(s): r for r, s in enumerate(rows)}
            self._table = np.zeros((len(rows), self.table_width), dtype=np.int32)
            for r, s in enumerate(rows):
                blocks = self.cache.blocks(s.cache_id)
                self._table[r, : len(blocks)] = blocks
            return self._table
        for s in grown:
            blocks = self.cache.blocks(s.cache_id)
            self._table[self._row_of[id(s)], len(blocks) - 1] = blocks[-1]
        return self._table

    def _sample(self, logits: torch.Tensor, rows: list[Sequence], lag: int) -> torch.Tensor:
        """Next tokens [b] on the device; `lag` tokens of each row are still in flight (count toward its step)."""
        if all(s.params.greedy for s in rows):
            return logits.argmax(-1)
        floats = _pinned(torch.tensor([[s.params.temperature, s.params.top_p] for s in rows], dtype=torch.float32))
        ints = _pinned(torch.tensor([[s.params.top_k, s.params.seed, len(s.generated) + lag] for s in rows]))
        floats, ints = floats.to(logits.device, non_blocking=True), ints.to(logits.device, non_blocking=True)
        return sample(logits, floats[:, 0], ints[:, 0], floats[:, 1], ints[:, 1], ints[:, 2])

    def _accept(self, sched: Scheduler, rows: list[Sequence], tokens: list[int]) -> None:
        """Append each row's new token and end the rows that are done."""
        for seq, token in zip(rows, tokens):
            seq.generated.append(token)
            reason = self._finish_reason(seq, token)
            if reason:
                sched.finish(seq, reason)

    def _finish_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if token in self.eos and not p.ignore_eos:
            return "eos"
        if p.stop:
            window = max(len(s) for s in p.stop) + 8  # tokens: every token decodes to >= 1 char, bar byte pieces
            tail = self.tokenizer.decode(seq.generated[-window:], skip_special_tokens=False)
            if any(s in tail for s in p.stop):
                return "stop"
        if len(seq.generated) >= p.max_new_tokens:
            return "length"
        if seq.total >= seq.max_len:
            return "context"
        return None

    def _output(self, seq: Sequence) -> Output:
        text = self.tokenizer.decode(seq.generated, skip_special_tokens=True)
        if seq.finish_reason == "stop":
            text = text[: min((i for i in (text.find(s) for s in seq.params.stop) if i >= 0), default=len(text))]
        return Output(text, list(seq.generated), len(seq.prompt), len(seq.generated), seq.finish_reason or "length",
                      seq.truncated)
