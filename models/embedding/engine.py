"""Sentence embeddings, fast: the embedding engine behind `Embedder.embed(texts) -> float32 [n, d]`.

Everything runs as a stream of groups of token-id sequences (`embed_groups`): a background thread
(`batching`) sorts each group by length, cuts it into batches of at most `token_budget` real tokens
and packs each batch into pinned tensors, while the calling thread copies batches to the device and
runs them (fp16 on CUDA), pooling in fp32. A group's vectors are copied back asynchronously and handed
out only once the next group is queued on the device, so the device keeps working while the caller
turns results into rows. Texts are tokenized on a background thread too (`embed_with_counts`, and
`embed_documents` through `Chunker.stream`, which windows on another), or by the caller (`udfs`, with
the same stream over its Arrow batches). Groups of token ids come as lists or as flat `Sequences`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from tokenizers import Encoding, Tokenizer

from mlabatch.models.device import pick_device
from mlabatch.models.background import in_background
from mlabatch.models.embedding.batching import HostBatch, Sequences, plan_batches
from mlabatch.models.embedding.chunking import Chunker
from mlabatch.models.embedding.encoders import load_encoder
from mlabatch.models.embedding.pooling import PoolingConfig, pool_tokens, pool_windows
from mlabatch.models.packed_encoder import PackedEncoder
from mlabatch.models.tokenizer import encode_batch, load_tokenizer

SLICE_TEXTS = 2048  # texts tokenized per background step, and per group of embed_with_counts / embed_documents
Tag = TypeVar("Tag")


@dataclass
class EmbedResult:
    """Embeddings with what the tokenizer did to each text."""

    embeddings: np.ndarray  # float32 [n, d]
    token_counts: list[int]  # tokens embedded, special tokens included
    truncated: list[bool]  # True where the text had more tokens than max_tokens (or max_chunks windows)


@dataclass
class _Packed:
    """One packed batch of a group, in host memory; `last` closes the group (a group of nothing has no batch)."""

    tag: object
    size: int  # sequences in the group
    batch: HostBatch | None
    last: bool


@dataclass
class _Done(Generic[Tag]):
    """A group whose vectors are on their way back to the host (or whose batches raised `error`)."""

    tag: Tag
    host: torch.Tensor | None
    ready: torch.cuda.Event | None
    error: Exception | None
    timings: list = field(default_factory=list)  # (start, end) CUDA events or seconds, one per batch

    def result(self) -> tuple[Tag, np.ndarray | Exception, float]:
        """(tag, vectors or the error, device seconds) once the copy has landed."""
        if self.ready is not None:
            self.ready.synchronize()
        seconds = sum(s.elapsed_time(e) / 1e3 if isinstance(s, torch.cuda.Event) else e - s for s, e in self.timings)
        return self.tag, self.error if self.error is not None else self.host.numpy(), seconds


class Embedder:
    """Embeds texts with one packed encoder; holds no Spark or MLflow state, so it runs anywhere."""

    def __init__(self, encoder: PackedEncoder, tokenizer: Tokenizer, pooling: PoolingConfig,
                 device: torch.device, token_budget: int | None = None):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.device = device
        self.dim = encoder.word.embedding_dim
        self.max_tokens = min(pooling.max_tokens, encoder.max_positions)
        # Large batches keep an H100 busy; on CPUs smaller ones keep the attention padding cheap.
        self.token_budget = token_budget or (65536 if device.type == "cuda" else 4096)
        self.device_seconds = 0.0  # time the device spent running batches, summed over every call

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim] embeddings."""
        return self.embed_with_counts(texts).embeddings

    def chunker(self, window: int | None = None, overlap: int = 32, max_chunks: int = 64) -> Chunker:
        """Token windows for this model: `window` tokens at most (default and cap: the model's max_tokens)."""
        return Chunker(self.tokenizer, min(window or self.max_tokens, self.max_tokens), overlap, max_chunks)

    def embed_documents(self, texts: Sequence[str], window: int | None = None, overlap: int = 32,
                        max_chunks: int = 64) -> EmbedResult:
        """One vector per document however long: overlapping windows, embedded, averaged by token count.

        `token_counts` are the tokens embedded per document; `truncated` marks documents cut at max_chunks.
        """
        chunker, texts = self.chunker(window, overlap, max_chunks), list(texts)
        slices = ((start, texts[start:start + SLICE_TEXTS]) for start in range(0, len(texts), SLICE_TEXTS))
        windowed = in_background(lambda: chunker.stream(slices), depth=2)
        vectors, counts, truncated = [], [], []
        for (start, windows), chunk_vectors in self.embed_groups(((w, w[1].sequences) for w in windowed),
                                                                  raise_errors=True):
            n = min(SLICE_TEXTS, len(texts) - start)
            vectors.append(pool_windows(chunk_vectors, windows.n_tokens, windows.owner, n, self.pooling.normalize))
            counts += np.bincount(windows.owner, weights=windows.n_tokens, minlength=n).astype(int).tolist()
            last = np.r_[windows.owner[1:] != windows.owner[:-1], True]  # each text's last window
            truncated += windows.truncated[last].tolist()
        return EmbedResult(self._stack(vectors), counts, truncated)

    def embed_with_counts(self, texts: Sequence[str]) -> EmbedResult:
        """Embeddings plus token counts and truncation flags (texts cut at max_tokens), rows in input order."""
        texts = list(texts)
        slices = in_background(lambda: (self.encode(texts[start:start + SLICE_TEXTS])
                                        for start in range(0, len(texts), SLICE_TEXTS)), depth=2)
        groups = ((encodings, [e.ids for e in encodings]) for encodings in slices)
        vectors, counts, truncated = [], [], []
        for encodings, group_vectors in self.embed_groups(groups, raise_errors=True):
            vectors.append(group_vectors)
            counts += [len(e.ids) for e in encodings]
            truncated += [bool(e.overflowing) for e in encodings]
        return EmbedResult(self._stack(vectors), counts, truncated)

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        """The texts tokenized in one batched call (on every core), each cut at max_tokens."""
        self.tokenizer.enable_truncation(self.max_tokens)
        return encode_batch(self.tokenizer, list(texts))

    def _stack(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    @torch.inference_mode()
    def embed_groups(self, groups: Iterable[tuple[Tag, Sequences | list[list[int]]]], raise_errors: bool = False
                     ) -> Iterator[tuple[Tag, np.ndarray | Exception]]:
        """Embed each group of token-id sequences: yields (tag, float32 [len(ids), dim]) per group, in order.

        Sequences with no ids get a zero vector. A group whose batches raise yields the exception in
        place of its vectors (the caller can retry its rows one by one), or raises it if `raise_errors`.
        """
        pending: _Done | None = None
        for done in self._run(in_background(lambda: self._pack(groups), depth=16)):
            if pending is not None:
                yield self._collect(pending, raise_errors)
            pending = done
        if pending is not None:
            yield self._collect(pending, raise_errors)

    def _collect(self, done: _Done, raise_errors: bool) -> tuple:
        tag, result, seconds = done.result()
        self.device_seconds += seconds
        if raise_errors and isinstance(result, Exception):
            raise result
        return tag, result

    def _run(self, items: Iterator[_Packed]) -> Iterator[_Done]:
        """Run packed batches on the device; a group's result starts its copy back as its last batch is queued."""
        cuda = self.device.type == "cuda"
        pooled: torch.Tensor | None = None
        done: _Done | None = None
        for item in items:
            if done is None:
                pooled = torch.zeros((item.size, self.dim), dtype=torch.float32, device=self.device)
                done = _Done(item.tag, None, None, None)
            if item.batch is not None and done.error is None:
                started = self._clock()
                try:
                    rows, ids, layout = item.batch.to(self.device)
                    pooled[rows] = pool_tokens(self.encoder(ids, layout), layout, self.pooling)
                except Exception as err:  # noqa: BLE001 - handed to the caller with the group
                    done.error = err
                done.timings.append((started, self._clock()))
            if item.last:
                done.host = pooled.to("cpu", non_blocking=True) if cuda else pooled
                if cuda:
                    done.ready = torch.cuda.Event()
                    done.ready.record()
                yield done
                done = None

    def _clock(self) -> torch.cuda.Event | float:
        """A point in device time: a recorded CUDA event on GPU, the wall clock elsewhere (work is synchronous)."""
        if self.device.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _pack(self, groups: Iterable[tuple[Tag, Sequences | list[list[int]]]]) -> Iterator[_Packed]:
        """Groups -> length-sorted, token-budgeted, packed host batches (pinned on CUDA for async uploads)."""
        pin = self.device.type == "cuda"
        for tag, ids in groups:
            sequences = ids if isinstance(ids, Sequences) else Sequences.from_lists(ids)
            plans = plan_batches(sequences.lengths.tolist(), self.token_budget)
            if not plans:
                yield _Packed(tag, len(sequences), None, True)
            for k, rows in enumerate(plans):
                yield _Packed(tag, len(sequences), HostBatch.pack(sequences, rows, pin), k == len(plans) - 1)


def load_embedder(model_dir: str | Path, device: str | torch.device = "auto", token_budget: int | None = None
                  ) -> Embedder:
    """An embedder for a local model directory (a BERT-family model or an MLA-converted one) on `device`."""
    model_dir, target = Path(model_dir), pick_device(device)
    return Embedder(load_encoder(model_dir, target), load_tokenizer(model_dir), PoolingConfig.from_dir(model_dir),
                    target, token_budget=token_budget)
