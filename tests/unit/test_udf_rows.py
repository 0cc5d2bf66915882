"""What the worker functions return per row, without Spark: vectors or text for good values, errors for
everything else, in input order, with one engine run per task."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from pydoc_data.topics import topics

from mlabatch.models.generation.config import SamplingParams
from mlabatch.models.rows import generation_frames, generation_rows
from mlabatch.udfs.embed import Windowing, embed_documents_worker, embed_texts

INVISIBLE_ONLY = ["\u200b\u200c\u200d", "\u2060\ufeff", "\x00\x07\x1b", "\u00ad \u2028\u2029\t"]
DOCUMENTS_ARROW = pa.schema([(c, pa.string()) for c in ("id", "text", "content_hash", "doc_error")])


def as_spark_feeds(worker, frames: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """The documents worker run as mapInArrow runs it: Arrow batches of the frames in, Arrow batches out
    (checked against DOCUMENT_ROWS_ARROW), returned as frames."""
    from mlabatch.udfs.embed import DOCUMENT_ROWS_ARROW

    out = list(worker(pa.RecordBatch.from_pandas(f, schema=DOCUMENTS_ARROW, preserve_index=False) for f in frames))
    assert all(b.schema == DOCUMENT_ROWS_ARROW for b in out)
    return [b.to_pandas() for b in out]


def test_each_bad_value_gets_an_error_and_good_rows_a_vector(embedder):
    values = pd.Series(["good text", None, "", "   \t", 42, float("nan"), "more good text"], dtype=object)
    out, = embed_texts(iter([values]), embedder)
    assert list(out["error"]) == [None, "text is null", "text is empty or whitespace",
                                  "text is empty or whitespace", "text is a int, not a string",
                                  "text is null", None]
    expected = embedder.embed(["good text", "more good text"])
    np.testing.assert_allclose(np.stack([out["embedding"][0], out["embedding"][6]]), expected, atol=1e-5)
    assert out["embedding"][1] is None and out["token_count"][1] == 0
    assert list(out["truncated"]) == [False] * 7


def test_a_row_that_breaks_the_model_is_isolated(embedder, monkeypatch):
    from mlabatch.models.embedding.engine import Embedder

    poison = embedder.tokenizer.token_to_id("poison")

    class Fragile(Embedder):
        """The real embedder, except that its encoder raises on a batch holding one poisoned token."""

        def __init__(self):
            super().__init__(embedder.encoder, embedder.tokenizer, embedder.pooling, embedder.device, 64)
            real = self.encoder

            def encoder(ids, layout):
                if (ids == poison).any():
                    raise RuntimeError("cannot embed this")
                return real(ids, layout)

            self.encoder = encoder

    out, = embed_texts(iter([pd.Series(["fine", "poison pill", "also fine"])]), Fragile())
    assert list(out["error"]) == [None, "embedding failed: RuntimeError: cannot embed this", None]
    assert out["embedding"][0] is not None and out["embedding"][2] is not None

    docs = pd.DataFrame({"id": ["a", "b"], "text": ["fine", "poison pill"], "content_hash": ["h", "h"],
                         "doc_error": [None, None]})
    from mlabatch.udfs import embed as embed_module

    monkeypatch.setattr(embed_module, "get_engine", lambda *args: Fragile())  # the worker's engine
    rows, = as_spark_feeds(embed_documents_worker("unused", Windowing(128, 16, 4, pool=False), device="cpu"), [docs])
    assert list(rows["error"]) == [None, "embedding failed: RuntimeError: cannot embed this"]
    assert rows["embedding"][0] is not None and rows["embedding"][1] is None

    # Pooling: a document keeps the vector of its windows that embed; one whose windows all fail gets the error.
    docs = pd.DataFrame({"id": ["a", "b", "c"], "text": ["fine " * 300 + "poison pill", "poison pill", "fine"],
                         "content_hash": "h", "doc_error": [None, None, None]})
    rows, = as_spark_feeds(embed_documents_worker("unused", Windowing(128, 16, 8, pool=True), device="cpu"), [docs])
    assert list(rows["id"]) == ["a", "b", "c"] and list(rows["chunk"]) == [0, 0, 0]
    assert list(rows["error"]) == [None, "embedding failed: RuntimeError: cannot embed this", None]
    assert rows["embedding"][0] is not None and rows["embedding"][1] is None and rows["embedding"][2] is not None
    assert rows["token_count"][0] > 128 and rows["chunk_text"][0] is None and rows["chunk_text"][2] == "fine"


def test_batches_of_nothing_to_embed_give_their_error_rows(minilm_dir):
    empty = pd.DataFrame({"id": [], "text": [], "content_hash": [], "doc_error": []})
    bad = pd.DataFrame({"id": ["a", "b"], "text": [None, "   "], "content_hash": "h", "doc_error": [None, None]})
    worker = embed_documents_worker(str(minilm_dir), Windowing(128, 16, 4, pool=False), device="cpu")
    rows = pd.concat(as_spark_feeds(worker, [empty, bad, empty]), ignore_index=True)
    assert rows[["id", "chunk", "token_count", "error"]].values.tolist() == [
        ["a", 0, 0, "text is null"], ["b", 0, 0, "text is empty or whitespace"]]
    assert rows["embedding"].isna().all() and rows["chunk_text"].tolist() == [None, "   "]


def test_unknown_model_dir_fails_with_the_fix(tmp_path):
    from mlabatch.models.registry.resolve import ModelNotFoundError, resolve_model

    with pytest.raises(ModelNotFoundError, match="models prepare"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))


def test_texts_that_show_nothing_are_empty_for_embedding_and_chunking(minilm_dir, embedder):
    out, = embed_texts(iter([pd.Series(INVISIBLE_ONLY + ["zero\u200bwidth inside"])]), embedder)
    assert list(out["error"]) == ["text is empty or whitespace"] * 4 + [None]
    assert out["embedding"][4] is not None

    docs = pd.DataFrame({"id": ["a", "b"], "text": [INVISIBLE_ONLY[0], "visible"], "content_hash": ["h1", "h2"],
                         "doc_error": [None, None]})
    rows, = as_spark_feeds(embed_documents_worker(str(minilm_dir), Windowing(128, 16, 4, pool=False), device="cpu"),
                           [docs])
    assert rows[["id", "chunk", "token_count", "error"]].values.tolist() == [
        ["a", 0, 0, "text is empty or whitespace"], ["b", 0, 3, None]]


def _documents(n_batches: int = 3) -> list[pd.DataFrame]:
    texts = list(topics.values())
    huge = " ".join(texts)[:400_000]  # about 50,000+ tokens: dozens of windows, cut at max_chunks
    frames = []
    for b in range(n_batches):
        chunk = texts[b * 7:(b + 1) * 7] + ([huge] if b == 1 else []) + [None, "   "]
        frames.append(pd.DataFrame({"id": [f"{b}-{i}" for i in range(len(chunk))], "text": chunk,
                                    "content_hash": "h", "doc_error": [None] * (len(chunk) - 1) + ["rejected"]}))
    return frames


def test_documents_worker_gives_the_rows_of_chunking_then_embedding_each_chunk_text(minilm_dir, embedder, tokenizer):
    from chunking_oracle import split_text

    batches = _documents()
    reports = []
    out = as_spark_feeds(embed_documents_worker(str(minilm_dir), Windowing(128, 16, 256, pool=False), 512, "cpu",
                                                reports.append), batches)
    rows = pd.concat(out, ignore_index=True)  # groups of batches come out in input order
    expected = []
    for docs in batches:
        for doc_id, text, error in docs[["id", "text", "doc_error"]].itertuples(index=False):
            if error is not None or text is None or not text.strip():
                expected.append((doc_id, 0, None, 0))
                continue
            expected += [(doc_id, c.index, c.text, c.n_tokens) for c in split_text(text, tokenizer, 128, 16, 256)]
    got = [(r.id, r.chunk, r.chunk_text if r.error is None else None, r.token_count) for r in rows.itertuples()]
    assert got == expected
    good = rows[rows["error"].isna()]
    before = embedder.embed_with_counts(list(good["chunk_text"]))  # the path before: chunk text tokenized again
    np.testing.assert_allclose(np.stack(good["embedding"].to_numpy()), before.embeddings, atol=1e-5)
    assert list(good["token_count"]) == before.token_counts
    assert rows["id"].value_counts().max() > 100  # the huge document really was split into many windows
    assert rows.set_index("id").loc["2-8", "error"] == "rejected"
    (stats,) = reports
    assert stats.items == sum(len(b) for b in batches) and stats.tokens_in > 50_000
    assert 0 < stats.engine_seconds <= stats.seconds


def test_missing_values_as_any_pandas_version_gives_them(minilm_dir):
    """Missing values however a frame spells them (None, NaN, pd.NA) reach the worker as Arrow nulls."""
    for missing, dtype in ((None, object), (float("nan"), object), (pd.NA, "string")):
        docs = pd.DataFrame({"id": ["a", "b"], "text": pd.Series(["some words", missing], dtype=dtype),
                             "content_hash": "h", "doc_error": pd.Series([missing, missing], dtype=dtype)})
        rows, = as_spark_feeds(embed_documents_worker(str(minilm_dir), Windowing(128, 16, 4, pool=False), device="cpu"),
                           [docs])
        assert rows["error"].iloc[0] is None and rows["token_count"].iloc[0] > 0
        assert rows["error"].iloc[1] == "text is null"


def test_pooling_in_the_worker_matches_embed_documents(minilm_dir, embedder):
    docs = pd.DataFrame({"id": ["long", "short"], "text": [topics["class"], "A short document."],
                         "content_hash": "h", "doc_error": [None, None]})
    rows, = as_spark_feeds(embed_documents_worker(str(minilm_dir), Windowing(128, 16, 64, pool=True), 512, "cpu"),
                           [docs])
    expected = embedder.embed_documents(list(docs["text"]), window=128, overlap=16)
    np.testing.assert_allclose(np.stack(rows["embedding"].to_numpy()), expected.embeddings, atol=1e-5)
    assert list(rows["chunk"]) == [0, 0] and list(rows["token_count"]) == expected.token_counts
    assert rows["chunk_text"][0] is None and rows["chunk_text"][1] == "A short document."


def test_prompts_that_show_nothing_never_reach_the_generator(tiny_decoder_dir):
    from mlabatch.models.generation.engine import load_generator

    generator = load_generator(tiny_decoder_dir, "cpu")
    out = generation_rows(pd.Series(INVISIBLE_ONLY + ["a real prompt"]), generator, SamplingParams(max_new_tokens=3))
    assert list(out["error"]) == ["prompt is empty or whitespace"] * 4 + [None]
    assert out["text"][4] is not None and out["generated_tokens"][4] == 3
    assert generator.stats.prompt_tokens == out["prompt_tokens"][4]  # only the real prompt reached the engine


def test_streaming_generation_matches_batch_by_batch_and_keeps_input_order(tiny_decoder_dir):
    from mlabatch.models.generation.config import EngineConfig
    from mlabatch.models.generation.engine import load_generator

    generator = load_generator(tiny_decoder_dir, "cpu", EngineConfig(max_batch=4, num_blocks=64))
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    batches = [pd.Series([" ".join(words[: 1 + (3 * b + i) % 10]) for i in range(5)] + [None]) for b in range(4)]
    params = SamplingParams(max_new_tokens=9)
    streamed = list(generation_frames(iter(batches), generator, params))
    assert generator.stats.prompt_tokens == sum(streamed_frame["prompt_tokens"].sum() for streamed_frame in streamed)
    one_by_one = [generation_rows(b, generator, params) for b in batches]
    assert len(streamed) == len(batches)
    for got, want in zip(streamed, one_by_one):
        pd.testing.assert_frame_equal(got, want)
    assert streamed[0]["error"].iloc[-1] == "prompt is null"
