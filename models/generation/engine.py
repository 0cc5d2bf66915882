"""The batch generation engine: prompts in, continuations out, on an MLA decoder and its paged latent cache.

Each loop iteration admits waiting prompts (`scheduler`; prefill batched by a token budget), then runs
one decode step for the whole running batch (`model_runner`): one `flash_mla_with_kvcache` call per
layer, replayed from a CUDA graph on GPU when the batch fits a captured bucket. Finished sequences free
their pages at once, so
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
from collections import deque
from typing import Iterable, Iterator, Sequence as Seq

import torch
from tokenizers import Tokenizer

from mlabatch.models.background import in_background
from mlabatch.models.device import pick_device
from mlabatch.models.generation.block_manager import BLOCK, BlockManager
from mlabatch.models.generation.config import EngineConfig, SamplingParams
from mlabatch.models.generation.kv_cache import allocate_kv_cache, pool_blocks
from mlabatch.models.generation.model_runner import ModelRunner
from mlabatch.models.generation.scheduler import DecodePlan, Scheduler
from mlabatch.models.generation.sequence import Sequence
from mlabatch.models.generation.decoders import load_decoder
from mlabatch.models.mla_decoder import MLADecoder
from mlabatch.models.tokenizer import load_tokenizer


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
    """Counters of the last engine run (generate() or generate_stream())."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    decode_steps: int = 0
    preemptions: int = 0
    graph_steps: int = 0
    overlapped_steps: int = 0  # decode steps queued before the previous step's tokens were read
    seconds: float = 0.0
    prefill_seconds: float = 0.0  # wall time inside prefill (the rest of `seconds` is decode and bookkeeping)
    batch_sizes: list[int] = field(default_factory=list)


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


class Generator:
    """Continues prompts with an MLA decoder; create once per device and reuse (the pool is allocated once)."""

    def __init__(self, model: MLADecoder, tokenizer: Tokenizer, model_dir: str | Path,
                 config: EngineConfig = EngineConfig()) -> None:
        self.model, self.tokenizer, self.model_dir, self.config = model, tokenizer, Path(model_dir), config
        self.device = model.embed_tokens.weight.device
        self.eos = eos_ids(self.model_dir)
        num_blocks = pool_blocks(model, config)
        self.blocks = BlockManager(num_blocks)
        scratch = self.blocks.take()  # one page that padded graph rows may write to
        self.max_context = min(model.max_positions, self.blocks.num_free * BLOCK)
        self.runner = ModelRunner(model, allocate_kv_cache(model, num_blocks), config.max_batch, self.max_context,
                                  scratch, config.cuda_graphs)
        self.stats = EngineStats()
        self._chat = None

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

    def prepare(self, index: int, prompt: str | list[int], params: SamplingParams = SamplingParams()) -> Sequence:
        """The prompt tokenized as a Sequence, cut to leave room for `params.max_new_tokens` in the context.

        A cut drops the prompt's beginning (its end is what the continuation follows) and sets
        `truncated`. When `max_new_tokens` alone fills the context no prompt leaves room for all of it;
        the prompt then keeps up to context - 1 tokens, and generation ends at the context limit
        (finish_reason "context"). Raises ValueError for a prompt with no tokens. Safe to call from
        another thread while the engine runs (callers tokenize the next prompts meanwhile).
        """
        ids = self._encode(prompt)
        if not ids:
            raise ValueError(f"prompt {index} has no tokens")
        room = self.max_context - params.max_new_tokens
        keep = room if room >= 1 else self.max_context - 1
        truncated = len(ids) > keep
        return Sequence(index, ids[-keep:] if truncated else ids, params, self.max_context, truncated)

    # ---- the loop ----
    def generate(self, prompts: Seq[str | list[int]], params: SamplingParams | Seq[SamplingParams] = SamplingParams()
                 ) -> list[Output]:
        """Continue every prompt (text or token ids); outputs in prompt order.

        Prompts are tokenized on a background thread while the first ones already run.
        """
        per_row = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(per_row) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(per_row)} sampling settings")
        seqs = in_background(lambda: (self.prepare(i, p, s) for i, p, s in zip(range(len(prompts)), prompts, per_row)),
                             depth=self.config.max_batch)
        return [output for _, output in self.generate_stream(seqs)]

    @torch.no_grad()
    def generate_stream(self, seqs: Iterable[Sequence]) -> Iterator[tuple[Sequence, Output]]:
        """Continue prepared sequences (see `prepare`) as they come, yielding (sequence, output) in input order.

        One engine run however many there are: the input is read only while fewer than max_batch
        sequences wait, so slots freed by finished rows are refilled at once and the decode batch stays
        full until the input ends. `stats` covers the whole run; its `seconds` leave out the time spent
        waiting for input and in the caller between outputs.
        """
        seqs = iter(seqs)
        sched = Scheduler(self.blocks, self.config.max_batch, self.config.prefill_token_budget)
        self.stats = EngineStats()
        graph_steps = self.runner.graph_steps
        order: deque[Sequence] = deque()  # read, not yet handed out
        exhausted, pending = False, None
        clock = time.perf_counter()
        while True:
            while not exhausted and len(sched.waiting) < self.config.max_batch:
                self.stats.seconds += time.perf_counter() - clock
                seq = next(seqs, None)
                clock = time.perf_counter()
                if seq is None:
                    exhausted = True
                else:
                    order.append(seq)
                    sched.add([seq])
                    self.stats.prompt_tokens += len(seq.prompt)
            if pending is None and sched.done:
                break
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
                    plan = sched.plan()
                    tokens = torch.tensor([s.generated[-1] for s in plan.rows]).to(self.device, non_blocking=True)
                    pending = self._launch(plan, tokens, lag=0)
            self.stats.preemptions = sched.preemptions
            self.stats.graph_steps = self.runner.graph_steps - graph_steps
            while order and order[0].finish_reason is not None:
                seq = order.popleft()
                self.stats.generated_tokens += len(seq.generated)
                output = self._output(seq)
                self.stats.seconds += time.perf_counter() - clock
                yield seq, output  # the device works on `pending` meanwhile
                clock = time.perf_counter()
        self.stats.seconds += time.perf_counter() - clock

    def _prefill(self, sched: Scheduler) -> None:
        admitted = sched.admit()
        if not admitted:
            return
        logits = self.runner.prefill(admitted)
        fresh = [i for i, s in enumerate(admitted) if not s.generated]  # recomputed ones already hold their token
        if fresh:
            rows = [admitted[i] for i in fresh]
            self._accept(sched, rows, self.runner.sample(logits[fresh], rows, lag=0).tolist())

    def _continue(self, sched: Scheduler, pending: _Launched) -> _Launched | None:
        """Launch the step after `pending` for its rows that surely go on, or None when the loop must pause.

        Rows ending by length or context after the pending token sit this step out; a row that turns out
        to end (EOS, stop string) with the pending token computes one token that is dropped.
        """
        keep = [r for r, s in enumerate(pending.rows) if s.finish_reason is None and not self._last_token(s)]
        rows = [pending.rows[r] for r in keep]
        if not rows or sched.can_admit(len(rows)):
            return None
        plan = sched.try_plan(rows)
        if plan is None:
            return None
        tokens = pending.tokens
        if len(rows) != len(pending.rows):
            tokens = tokens.index_select(0, torch.tensor(keep).to(self.device, non_blocking=True))
        self.stats.overlapped_steps += 1
        return self._launch(plan, tokens, lag=1)

    def _last_token(self, seq: Sequence) -> bool:
        """Whether the token in flight is `seq`'s last for length or context reasons."""
        return len(seq.generated) + 1 >= seq.params.max_new_tokens or seq.total + 1 >= seq.max_len

    def _launch(self, plan: DecodePlan, tokens: torch.Tensor, lag: int) -> _Launched:
        """Queue one decode step of the plan (input `tokens` [b] on the device) and its sampling."""
        logits, greedy = self.runner.decode(plan, tokens)
        self.stats.decode_steps += 1
        self.stats.batch_sizes.append(len(plan.rows))
        greedy_rows = all(s.params.greedy for s in plan.rows)
        return _Launched(plan.rows, greedy.clone() if greedy_rows else self.runner.sample(logits, plan.rows, lag))

    def _read(self, sched: Scheduler, step: _Launched) -> None:
        """Wait for a launched step's tokens and accept them (rows that ended meanwhile drop theirs)."""
        rows, tokens = step.rows, step.host_tokens()
        live = [i for i, s in enumerate(rows) if s.finish_reason is None]
        self._accept(sched, [rows[i] for i in live], [tokens[i] for i in live])

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


def load_generator(model_dir: str | Path, device: str | torch.device = "auto",
                   config: EngineConfig = EngineConfig()) -> Generator:
    """A generation engine for a converted decoder directory (bf16 on GPU, float32 on CPU)."""
    model_dir, target = Path(model_dir), pick_device(device)
    return Generator(load_decoder(model_dir, target), load_tokenizer(model_dir), model_dir, config)
