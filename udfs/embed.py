"""Embedding on Spark workers: `embed_udf(model)` for a text column, and `embed_documents_worker` for the
pipeline's one model stage (documents in, one row per token window out, tokenized once).

Both stream a task's Arrow batches through one engine: background threads tokenize (and window) the
next batches while the device embeds this one, and the engine hands a batch's vectors back only once the
next batch is queued on the device (`Embedder.embed_groups`). The documents worker runs on Arrow batches
(`mapInArrow`): documents come in and rows go out without pandas, the vectors as one float buffer per batch. Bad values never fail the task: they come
back with `error` set. A `models:/` URI is resolved on the workers against the MLflow stores the driver
has when the function is made, so set the registry (`mlflow.set_registry_uri`) before making it.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from mlabatch.models.background import in_background
from mlabatch.models.embedding.batching import Sequences
from mlabatch.models.embedding.chunking import Windows
from mlabatch.models.embedding.engine import Embedder
from mlabatch.models.embedding.pooling import pool_windows
from mlabatch.models.rows import EMBED_RESULT_TYPE, embedding_rows, input_error
from mlabatch.udfs.devices import device_udf, task_setup
from mlabatch.udfs.model_cache import driver_stores, get_engine
from mlabatch.udfs.task_stats import Report, TaskClock

PREFETCH_BATCHES = 2  # Arrow batches (or groups of them) tokenized ahead of the device
GROUP_BUDGETS = 4  # the documents worker hands the engine groups of at least this many token budgets
CHARS_PER_TOKEN = 4  # how a group's tokens are estimated before tokenizing (English prose: 4-5 characters)
# The model stage of the embedding pipeline: input (id, text, content_hash, doc_error), output one row per window,
# as Spark's schema and as the Arrow batches the worker returns (the same columns: a test holds them equal).
DOCUMENT_ROWS_SCHEMA = ("id string, chunk int, content_hash string, chunk_text string, token_count int, "
                        "truncated boolean, embedding array<float>, error string")
DOCUMENT_ROWS_ARROW = pa.schema([("id", pa.string()), ("chunk", pa.int32()), ("content_hash", pa.string()),
                                 ("chunk_text", pa.string()), ("token_count", pa.int32()), ("truncated", pa.bool_()),
                                 ("embedding", pa.list_(pa.float32())), ("error", pa.string())])


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
    """Consecutive Arrow batches of documents (id, text, content_hash, doc_error): which ones are embedded,
    and why the others are not."""

    batches: list[pa.RecordBatch]
    texts: list[str | None]
    errors: list[str | None]  # why a document is not embedded (its own doc_error or a bad text), per document

    @classmethod
    def read(cls, batch: pa.RecordBatch) -> _Documents:
        texts = batch.column("text").to_pylist()
        errors = [e if e is not None else input_error(t) for t, e in zip(texts, batch.column("doc_error").to_pylist())]
        return cls([batch], texts, errors)

    @cached_property
    def good(self) -> list[int]:
        """The documents that are embedded, in order."""
        return [i for i, e in enumerate(self.errors) if e is None]

    @cached_property
    def good_texts(self) -> list[str]:
        return [self.texts[i] for i in self.good]

    def column(self, name: str) -> pa.Array:
        return pa.concat_arrays([b.column(name).cast(pa.string()) for b in self.batches])

    @classmethod
    def merge(cls, parts: list[_Documents]) -> _Documents:
        if len(parts) == 1:
            return parts[0]
        return cls([b for p in parts for b in p.batches], [t for p in parts for t in p.texts],
                   [e for p in parts for e in p.errors])


def _groups(batches: Iterable[_Documents], chars: int) -> Iterator[_Documents]:
    """Consecutive batches merged until each group's texts hold at least `chars` characters (the last may hold
    fewer), so the tokenizer works on large slices and the device runs whole token budgets, waiting on the
    host once per group, not once per Arrow batch."""
    pending: list[_Documents] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += sum(map(len, batch.good_texts))
        if held >= chars:
            yield _Documents.merge(pending)
            pending, held = [], 0
    if pending:
        yield _Documents.merge(pending)


def _embed_one_by_one(embedder: Embedder, sequences: Sequences) -> tuple[np.ndarray, list[str | None]]:
    """Each window embedded alone, after the engine failed on their batch: only the ones that break it fail
    (their vectors are left zero, their errors set)."""
    vectors = np.zeros((len(sequences), embedder.dim), dtype=np.float32)
    errors: list[str | None] = []
    for i in range(len(sequences)):
        try:
            (_, v), = embedder.embed_groups([(None, sequences.take([i]))], raise_errors=True)
            vectors[i] = v[0]
            errors.append(None)
        except Exception as err:  # noqa: BLE001 - reported in the row's error, never kills the task
            errors.append(f"embedding failed: {type(err).__name__}: {err}")
    return vectors, errors


@dataclass
class _Rows:
    """Output rows of embedded documents, column by column (one per window, or one per document when pooling)."""

    doc: np.ndarray  # int64: the row's document, in the group
    chunk: np.ndarray  # int32
    text: list[str | None]
    tokens: np.ndarray
    truncated: np.ndarray  # bool
    vectors: np.ndarray  # float32 [rows, dim]
    valid: np.ndarray  # bool: the row has a vector
    errors: list[str | None]


def _window_rows(docs: _Documents, windows: Windows, vectors: np.ndarray, errors: list[str | None]) -> _Rows:
    valid = np.array([e is None for e in errors], dtype=bool)
    return _Rows(np.asarray(docs.good, dtype=np.int64)[windows.owner], windows.index, windows.texts(docs.good_texts),
                 windows.n_tokens, windows.truncated, vectors, valid, errors)


def _pooled_rows(docs: _Documents, windows: Windows, vectors: np.ndarray, errors: list[str | None],
                 normalize: bool) -> _Rows:
    """One row per document: its windows' vectors averaged by tokens, leaving out windows that failed (a
    document whose windows all failed gets the first one's error); its text only when one window holds it."""
    n, owner, counts = len(docs.good), windows.owner, windows.n_tokens
    embedded = np.array([e is None for e in errors], dtype=bool)
    per_doc = np.bincount(owner, minlength=n)
    last = np.cumsum(per_doc) - 1  # every document has at least one window
    valid = np.bincount(owner[embedded], minlength=n) > 0
    first_errors = [errors[w] for w in (last - per_doc + 1).tolist()]
    return _Rows(np.asarray(docs.good, dtype=np.int64), np.zeros(n, np.int32),
                 [t if k == 1 else None for t, k in zip(docs.good_texts, per_doc.tolist())],
                 np.bincount(owner, weights=counts, minlength=n), windows.truncated[last],
                 pool_windows(vectors[embedded], counts[embedded], owner[embedded], n, normalize), valid,
                 [None if ok else e for ok, e in zip(valid.tolist(), first_errors)])


def _document_rows(docs: _Documents, rows: _Rows) -> pa.RecordBatch:
    """DOCUMENT_ROWS_ARROW: the embedded rows and one row per document with an error (chunk 0, its text and
    the error), in document order. Columns are built whole, the vectors as one float buffer."""
    bad = np.array([i for i, e in enumerate(docs.errors) if e is not None], dtype=np.int64)
    order = np.argsort(np.concatenate([rows.doc, bad]), kind="stable")

    def column(embedded: np.ndarray, dtype: type) -> np.ndarray:
        return np.concatenate([embedded, np.zeros(len(bad), dtype)])[order].astype(dtype)

    valid = column(rows.valid, bool)
    source = column(np.arange(len(rows.doc)), np.int64)  # the row's vector
    offsets = np.concatenate([[0], np.cumsum(valid * rows.vectors.shape[1])]).astype(np.int32)
    documents = np.concatenate([rows.doc, bad])[order]
    bad_texts = [t if isinstance(t, str) else None for t in (docs.texts[i] for i in bad.tolist())]
    columns = [docs.column("id").take(documents), pa.array(column(rows.chunk, np.int32)),
               docs.column("content_hash").take(documents),
               pa.array(rows.text + bad_texts, pa.string()).take(order), pa.array(column(rows.tokens, np.int32)),
               pa.array(column(rows.truncated, bool)),
               pa.ListArray.from_arrays(pa.array(offsets), pa.array(rows.vectors[source[valid]].reshape(-1)),
                                        mask=pa.array(~valid)),
               pa.array(rows.errors + [docs.errors[i] for i in bad.tolist()], pa.string()).take(order)]
    return pa.RecordBatch.from_arrays(columns, schema=DOCUMENT_ROWS_ARROW)


def embed_documents_worker(model_ref: str, windowing: Windowing, token_budget: int | None = None,
                           device: str = "auto", report: Report | None = None
                           ) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A function for `df.mapInArrow(f, DOCUMENT_ROWS_SCHEMA)`: Arrow batches of documents (id, text,
    content_hash, doc_error) in, DOCUMENT_ROWS_ARROW batches of embedded token windows out, each document
    tokenized once. Consecutive Arrow batches are grouped (by characters, about GROUP_BUDGETS token budgets),
    and each group comes out as one batch.

    Documents that cannot be embedded (null, empty, rejected) come out as chunk 0 with the error.
    Each task hands its TaskStats to `report` when its partition is done.
    """
    stores = driver_stores(model_ref)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        clock = TaskClock(report)
        embedder = get_engine("embedder", model_ref, stores, task_setup(device), token_budget)
        chunker = embedder.chunker(windowing.max_tokens, windowing.overlap, windowing.max_chunks)
        busy = embedder.device_seconds
        groups = _groups(map(_Documents.read, batches), GROUP_BUDGETS * embedder.token_budget * CHARS_PER_TOKEN)
        # Arrow batches are read and tokenized on one thread, windowed on another, packed on a third (the engine's).
        windowed = in_background(lambda: chunker.stream((g, g.good_texts) for g in groups), PREFETCH_BATCHES)
        for (docs, windows), vectors in embedder.embed_groups((w, w[1].sequences) for w in windowed):
            if isinstance(vectors, Exception):
                vectors, errors = _embed_one_by_one(embedder, windows.sequences)
            else:
                errors = [None] * len(windows)
            clock.add(len(docs.texts), int(windows.sequences.cu[-1]))
            rows = (_pooled_rows(docs, windows, vectors, errors, embedder.pooling.normalize) if windowing.pool
                    else _window_rows(docs, windows, vectors, errors))
            yield _document_rows(docs, rows)
        clock.finish(embedder.device_seconds - busy)

    return run
