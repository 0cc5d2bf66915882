"""Split documents into token windows on the workers (a `mapInPandas` function), before embedding."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import pandas as pd

from mlabatch.models.embedding.chunking import split_text
from mlabatch.models.embedding.pooling import pool_windows
from mlabatch.models.registry.resolve import MlflowStores
from mlabatch.models.rows import input_error
from mlabatch.udfs.model_cache import get_tokenizer

# Input columns: id, text, content_hash, doc_error (a reason the whole document is rejected, or null).
CHUNK_SCHEMA = ("id string, chunk int, content_hash string, chunk_text string, n_tokens int, "
                "doc_truncated boolean, doc_error string")


def chunk_documents(model_ref: str, max_tokens: int, overlap: int,
                    max_chunks: int) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A function for `df.mapInPandas(f, CHUNK_SCHEMA)`: one row per window of each document.

    Documents that cannot be embedded (null, empty, rejected) pass through as chunk 0 so that they
    still get an output row carrying the error. Workers resolve a models:/ `model_ref` in the MLflow
    registry the driver has now.
    """
    stores = MlflowStores.current()  # the driver's registry, for workers to resolve models:/ URIs in

    def chunk(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        tokenizer = get_tokenizer(model_ref, stores)
        for docs in batches:
            rows = []
            for doc_id, text, content_hash, doc_error in docs[["id", "text", "content_hash", "doc_error"]].itertuples(index=False):
                if doc_error is not None or input_error(text) is not None:
                    rows.append((doc_id, 0, content_hash, text if isinstance(text, str) else None, 0, False, doc_error))
                    continue
                for c in split_text(text, tokenizer, max_tokens, overlap, max_chunks):
                    rows.append((doc_id, c.index, content_hash, c.text, c.n_tokens, c.truncated, None))
            yield pd.DataFrame(rows, columns=["id", "chunk", "content_hash", "chunk_text", "n_tokens",
                                              "doc_truncated", "doc_error"])

    return chunk


def pool_document_chunks(normalize: bool) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """A function for `groupBy("id").applyInPandas(f, schema)`: a document's chunk rows -> one row.

    The vector is the token-weighted mean of the chunks that embedded; the row keeps chunk 0's other
    fields, sums token counts, and is truncated if any chunk was. A document none of whose chunks
    embedded keeps its first error.
    """
    def pool(chunks: pd.DataFrame) -> pd.DataFrame:
        chunks = chunks.sort_values("chunk")
        row = chunks.iloc[[0]].copy()
        good = chunks[chunks["error"].isna()]
        row["token_count"] = int(chunks["token_count"].sum())
        row["truncated"] = bool(chunks["truncated"].any())
        row["chunk_text"] = None if len(chunks) > 1 else row["chunk_text"].iloc[0]
        if len(good):
            vectors = np.stack(good["embedding"].to_numpy()).astype(np.float32)
            owners = np.zeros(len(good), dtype=np.int64)
            row["embedding"] = [pool_windows(vectors, good["token_count"].to_numpy(), owners, 1, normalize)[0]]
            row["error"] = None
        return row

    return pool
