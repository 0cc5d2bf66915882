"""Sentence embeddings, fast: the embedding engine behind `Embedder.embed(texts) -> float32 [n, d]`.

Host work runs on two background threads: one tokenizes texts in slices (the Rust tokenizer releases
the GIL), the other sorts each slice by length, cuts it into batches of at most `token_budget` real
tokens and packs each batch into pinned tensors (no padding, see packed_encoder). The calling thread
only copies batches to the device and runs them (fp16 on CUDA), pooling in fp32 into one result
tensor that is copied back once at the end.
"""
from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from mlabatch.models.chunking import split_text
from mlabatch.models.packed_encoder import PackedEncoder
from mlabatch.models.varlen import PackedLayout


@dataclass
class EmbedResult:
    """Embeddings with what the tokenizer did to each text."""

    embeddings: np.ndarray  # float32 [n, d]
    token_counts: list[int]  # tokens embedded, special tokens included
    truncated: list[bool]  # True where the text had more tokens than max_tokens


@dataclass(frozen=True)
class PoolingConfig:
    """How token vectors become one vector (sentence-transformers' 1_Pooling + Normalize modules)."""

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


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' means the current CUDA device when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_DONE = object()


def in_background(make_items: Callable[[], Iterable], depth: int) -> Iterator:
    """Iterate `make_items()` produced on a daemon thread, at most `depth` items ahead.

    The host stages (tokenizing, packing) each get a thread, so they overlap with each other and with
    the device. An exception raised there is re-raised here; if the consumer stops early (or fails),
    the thread stops too instead of waiting forever on a full queue.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in make_items():
                if not put(item):
                    return
            put(_DONE)
        except BaseException as err:  # noqa: BLE001 - re-raised in the consuming thread
            put(err)

    threading.Thread(target=produce, daemon=True).start()
    try:
        while (item := items.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


@dataclass
class HostBatch:
    """One packed batch in host memory: output rows, token ids and their layout."""

    rows: torch.Tensor  # int64 [b], rows of the result
    ids: torch.Tensor  # int64 [T]
    layout: PackedLayout

    @classmethod
    def pack(cls, ids: list[list[int]], rows: list[int], pin: bool) -> "HostBatch":
        batch = cls(torch.tensor(rows), torch.from_numpy(np.fromiter((t for seq in ids for t in seq), dtype=np.int64)),
                    PackedLayout.from_lengths([len(x) for x in ids]))
        if pin:
            batch = cls(batch.rows.pin_memory(), batch.ids.pin_memory(), batch.layout.pin_memory())
        return batch

    def to(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, PackedLayout]:
        """(rows, ids, layout) on the device, copied asynchronously from pinned memory."""
        return (self.rows.to(device, non_blocking=True), self.ids.to(device, non_blocking=True),
                self.layout.to(device))


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


def plan_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Row indices grouped by ascending length so each group holds at most `token_budget` tokens.

    Texts with no tokens at all (possible with tokenizers that add no special tokens) are left out:
    their embedding stays zero.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in sorted((i for i, n in enumerate(lengths) if n), key=lengths.__getitem__):
        if current and used + lengths[i] > token_budget:
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        batches.append(current)
    return batches


class Embedder:
    """Embeds texts with one packed encoder; holds no Spark or MLflow state, so it runs anywhere."""

    def __init__(self, encoder: PackedEncoder, tokenizer: Tokenizer, pooling: PoolingConfig,
                 device: torch.device, token_budget: int | None = None, slice_size: int = 2048):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.device = device
        self.dim = encoder.word.embedding_dim
        self.max_tokens = min(pooling.max_tokens, encoder.max_positions)
        # Large batches keep an H100 busy; on CPUs smaller ones keep the attention padding cheap.
        self.token_budget = token_budget or (65536 if device.type == "cuda" else 4096)
        self.slice_size = slice_size

    def embed(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """float32 [len(texts), dim] embeddings."""
        return self.embed_with_counts(texts, show_progress).embeddings

    def embed_documents(self, texts: Sequence[str], window: int | None = None, overlap: int = 32,
                        max_chunks: int = 64, show_progress: bool = False) -> EmbedResult:
        """One vector per document however long: overlapping windows, embedded, averaged by token count.

        `window` defaults to the model's max_tokens. `token_counts` are the tokens embedded per
        document; `truncated` marks documents cut at max_chunks.
        """
        window = min(window or self.max_tokens, self.max_tokens)
        windows = [split_text(t, self.tokenizer, window, overlap, max_chunks) for t in texts]
        result = self.embed_with_counts([c.text for w in windows for c in w], show_progress)
        owners = np.repeat(np.arange(len(windows)), [len(w) for w in windows])
        pooled = pool_windows(result.embeddings, result.token_counts, owners, len(windows), self.pooling.normalize)
        counts = np.zeros(len(windows), dtype=np.int64)
        np.add.at(counts, owners, result.token_counts)
        return EmbedResult(pooled, counts.tolist(), [any(c.truncated for c in w) for w in windows])

    @torch.inference_mode()
    def embed_with_counts(self, texts: Sequence[str], show_progress: bool = False) -> EmbedResult:
        """Embeddings plus token counts and truncation flags, rows in input order."""
        texts = list(texts)
        counts = [0] * len(texts)
        truncated = [False] * len(texts)
        pooled = torch.zeros((len(texts), self.dim), dtype=torch.float32, device=self.device)
        self.tokenizer.enable_truncation(self.max_tokens)
        slices = in_background(lambda: ((start, self.tokenizer.encode_batch(texts[start:start + self.slice_size]))
                                        for start in range(0, len(texts), self.slice_size)), depth=2)
        batches = in_background(lambda: self._pack(slices, counts, truncated), depth=16)
        with tqdm(total=len(texts), desc="embedding", unit="text", disable=not show_progress) as bar:
            for batch in batches:
                rows, ids, layout = batch.to(self.device)
                pooled[rows] = self._pool(self.encoder(ids, layout), layout)
                bar.update(len(batch.rows))
        return EmbedResult(pooled.cpu().numpy(), counts, truncated)

    def _pack(self, slices: Iterator[tuple[int, list]], counts: list[int],
              truncated: list[bool]) -> Iterator[HostBatch]:
        """Tokenized slices -> length-sorted, token-budgeted, packed host batches; records counts."""
        pin = self.device.type == "cuda"
        for start, encodings in slices:
            ids = [e.ids for e in encodings]
            lengths = [len(x) for x in ids]
            for i, e in enumerate(encodings):
                counts[start + i] = lengths[i]
                truncated[start + i] = bool(e.overflowing)
            for rows in plan_batches(lengths, self.token_budget):
                yield HostBatch.pack([ids[i] for i in rows], [start + i for i in rows], pin)

    def _pool(self, hidden: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """[b, d] float32: mean over each sequence's tokens, or its first ([CLS]) token."""
        if self.pooling.mode == "cls":
            vectors = hidden[layout.cu_seqlens[:-1].long()].float()
        else:
            sums = torch.zeros((layout.num_seqs, hidden.shape[1]), dtype=torch.float32, device=hidden.device)
            sums.index_add_(0, layout.seq_index, hidden.float())
            vectors = sums / layout.cu_seqlens.diff().unsqueeze(1).float()
        return F.normalize(vectors, p=2, dim=1) if self.pooling.normalize else vectors
