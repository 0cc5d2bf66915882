"""Embedding on Spark workers: `embed_udf(model)` for a text column, and `embed_documents_worker` for the
pipeline's one model stage (documents in, one row per token window out, tokenized once).

Both stream a task's Arrow batches through one engine: a background thread tokenizes (and windows) the
next batch while the device embeds this one, and the engine hands a batch's vectors back only once the
next batch is queued on the device (`Embedder.embed_groups`). Bad values never fail the task: they come
back with `error` set. A `models:/` URI is resolved on the workers against the MLflow stores the driver
has when the function is made, so set the registry (`mlflow.set_registry_uri`) before making it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from mlabatch.models.background import in_background
from mlabatch.models.embedding.chunking import Chunk, Chunker
from mlabatch.models.embedding.engine import Embedder
from mlabatch.models.embedding.pooling import pool_windows
from mlabatch.models.rows import EMBED_RESULT_TYPE, embedding_rows, input_error
from mlabatch.udfs.devices import device_udf, task_setup
from mlabatch.udfs.model_cache import driver_stores, get_engine
from mlabatch.udfs.task_stats import Report, TaskClock

PREFETCH_BATCHES = 2  # Arrow batches (or groups of them) tokenized ahead of the device
GROUP_BUDGETS = 4  # the documents worker hands the engine groups of at least this many token budgets
# The model stage of the embedding pipeline: input (id, text, content_hash, doc_error), output one row per window.
DOCUMENT_ROWS_SCHEMA = ("id string, chunk int, content_hash string, chunk_text string, token_count int, "
                        "truncated boolean, embedding array<float>, error string")


@dataclass(frozen=True)
class Windowing:
    """How documents become token windows: window length, overlap, cap per document, and whether a
    document's windows are pooled into one row."""

    max_tokens: int
    overlap: int
    max_chunks: int
    pool: bool


def embed_texts(batches: Iterator[pd.Series], embedder: Embedder) -> Iterator[pd.DataFrame]:
    """EMBED_RESULT_TYPE frames, one per batch of texts, each text cut at the model's max_tokens."""
    def tokenize(texts: pd.Series) -> tuple:
        errors = [input_error(v) for v in texts]
        good = [i for i, e in enumerate(errors) if e is None]
        return texts, errors, good, embedder.encode([texts.iat[i] for i in good])

    prepared = in_background(lambda: map(tokenize, batches), PREFETCH_BATCHES)
    for (texts, errors, good, encodings), vectors in embedder.embed_groups(
            ((p, [e.ids for e in p[3]]) for p in prepared)):
        if isinstance(vectors, Exception):  # the engine failed on this batch: find the rows that break it
            yield embedding_rows(texts, embedder)
            continue
        embeddings, counts, truncated = [None] * len(texts), [0] * len(texts), [False] * len(texts)
        for i, vector, encoding in zip(good, vectors, encodings):
            embeddings[i], counts[i], truncated[i] = vector, len(encoding.ids), bool(encoding.overflowing)
        yield pd.DataFrame({"embedding": embeddings, "token_count": counts, "truncated": truncated, "error": errors})


def embed_udf(model_uri: str, token_budget: int | None = None, device: str = "auto"):
    """A pandas UDF for `df.withColumn("emb", embed_udf(uri)("text"))`; returns an EMBED_RESULT_TYPE struct.

    Create it once and reuse it: each call makes a new UDF. `model_uri` is a models:/ URI or a model
    directory readable by every worker (a local path in local mode, a /Volumes path on Databricks).
    `token_budget` caps real tokens per model call (default: 65536 on GPU, 4096 on CPU).
    """
    stores = driver_stores(model_uri)

    def embed(batches: Iterator[pd.Series], task_device: str) -> Iterator[pd.DataFrame]:
        embedder = get_engine("embedder", model_uri, stores, task_device, token_budget)
        yield from embed_texts(batches, embedder)

    return device_udf(embed, EMBED_RESULT_TYPE, device)


@dataclass
class _Documents:
    """Documents of one or more Arrow batches, windowed: the windows of each document that can be embedded."""

    docs: pd.DataFrame  # id, text, content_hash, doc_error
    errors: list[str | None]  # why a document is not embedded (its own doc_error or a bad text), per document
    windows: list[list[Chunk]]  # per document; empty for documents with an error

    @cached_property
    def ids(self) -> list[list[int]]:
        """Every window's token ids, in document order."""
        return [c.ids for w in self.windows for c in w]

    @cached_property
    def tokens(self) -> int:
        return sum(len(x) for x in self.ids)

    @classmethod
    def merge(cls, parts: list[_Documents]) -> _Documents:
        if len(parts) == 1:
            return parts[0]
        return cls(pd.concat([p.docs for p in parts], ignore_index=True), [e for p in parts for e in p.errors],
                   [w for p in parts for w in p.windows])


def _token_groups(batches: Iterable[_Documents], tokens: int) -> Iterator[_Documents]:
    """Consecutive batches merged until each group holds at least `tokens` tokens (the last may hold fewer),
    so the device runs whole token budgets and waits on the host once per group, not once per Arrow batch."""
    pending: list[_Documents] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.tokens
        if held >= tokens:
            yield _Documents.merge(pending)
            pending, held = [], 0
    if pending:
        yield _Documents.merge(pending)


def _window_documents(docs: pd.DataFrame, chunker: Chunker) -> _Documents:
    texts = docs["text"].tolist()
    # doc_error is a string or missing (None, or NaN where pandas gives Arrow's string nulls that way)
    errors = [e if isinstance(e, str) else input_error(t) for t, e in zip(texts, docs["doc_error"].tolist())]
    good = [i for i, e in enumerate(errors) if e is None]
    windows: list[list[Chunk]] = [[] for _ in errors]
    for i, w in zip(good, chunker.split([texts[i] for i in good])):
        windows[i] = w
    return _Documents(docs, errors, windows)


def _embed_one_by_one(embedder: Embedder, ids: list[list[int]]) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Each window embedded alone, after the engine failed on their batch: only the ones that break it fail."""
    vectors: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for one in ids:
        try:
            (_, v), = embedder.embed_groups([(None, [one])], raise_errors=True)
            vectors.append(v[0])
            errors.append(None)
        except Exception as err:  # noqa: BLE001 - reported in the row's error, never kills the task
            vectors.append(None)
            errors.append(f"embedding failed: {type(err).__name__}: {err}")
    return vectors, errors


def _document_rows(batch: _Documents, vectors: list[np.ndarray | None], chunk_errors: list[str | None],
                   pool: bool, normalize: bool) -> pd.DataFrame:
    """DOCUMENT_ROWS_SCHEMA rows: a row per window (or per document when pooling); a document with an
    error gets one row, chunk 0, carrying its text and the error."""
    rows = []
    k = 0
    for (doc_id, text, content_hash), error, windows in zip(
            batch.docs[["id", "text", "content_hash"]].itertuples(index=False), batch.errors, batch.windows):
        if error is not None:
            rows.append((doc_id, 0, content_hash, text if isinstance(text, str) else None, 0, False, None, error))
            continue
        mine = range(k, k + len(windows))
        k += len(windows)
        if not pool:
            rows += [(doc_id, c.index, content_hash, c.text, c.n_tokens, c.truncated, vectors[j], chunk_errors[j])
                     for c, j in zip(windows, mine)]
            continue
        good = [j for j in mine if chunk_errors[j] is None]
        counts = [c.n_tokens for c in windows]
        vector = (pool_windows(np.stack([vectors[j] for j in good]), [counts[j - mine.start] for j in good],
                               np.zeros(len(good), dtype=np.int64), 1, normalize)[0] if good else None)
        rows.append((doc_id, 0, content_hash, text if len(windows) == 1 else None, sum(counts),
                     windows[-1].truncated, vector, None if good else chunk_errors[mine.start]))
    return pd.DataFrame(rows, columns=["id", "chunk", "content_hash", "chunk_text", "token_count", "truncated",
                                       "embedding", "error"])


def embed_documents_worker(model_ref: str, windowing: Windowing, token_budget: int | None = None,
                           device: str = "auto", report: Report | None = None
                           ) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A function for `df.mapInPandas(f, DOCUMENT_ROWS_SCHEMA)`: documents (id, text, content_hash,
    doc_error) in, embedded token windows out, each document tokenized once. Consecutive Arrow batches
    are grouped by tokens, and each group comes out as one frame.

    Documents that cannot be embedded (null, empty, rejected) come out as chunk 0 with the error.
    Each task hands its TaskStats to `report` when its partition is done.
    """
    stores = driver_stores(model_ref)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        clock = TaskClock(report)
        embedder = get_engine("embedder", model_ref, stores, task_setup(device), token_budget)
        chunker = embedder.chunker(windowing.max_tokens, windowing.overlap, windowing.max_chunks)
        busy = embedder.device_seconds
        windowed = (_window_documents(docs, chunker) for docs in batches)
        groups = in_background(lambda: _token_groups(windowed, GROUP_BUDGETS * embedder.token_budget), PREFETCH_BATCHES)
        for batch, vectors in embedder.embed_groups((b, b.ids) for b in groups):
            if isinstance(vectors, Exception):
                vectors, errors = _embed_one_by_one(embedder, batch.ids)
            else:
                vectors, errors = list(vectors), [None] * len(vectors)
            clock.add(len(batch.docs), batch.tokens)
            yield _document_rows(batch, vectors, errors, windowing.pool, embedder.pooling.normalize)
        clock.finish(embedder.device_seconds - busy)

    return run
