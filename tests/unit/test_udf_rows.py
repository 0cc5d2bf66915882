"""What the embedding UDF returns per row, without Spark: vectors for text, errors for everything else."""
import numpy as np
import pandas as pd
import pytest

from mlabatch.udfs import embed as embed_module
from mlabatch.udfs.embed import embed_series


def test_each_bad_value_gets_an_error_and_good_rows_a_vector(minilm_dir, embedder):
    values = pd.Series(["good text", None, "", "   \t", 42, float("nan"), "more good text"], dtype=object)
    out = embed_series(values, str(minilm_dir), "cpu", token_budget=64)
    assert list(out["error"]) == [None, "text is null", "text is empty or whitespace",
                                  "text is empty or whitespace", "text is a int, not a string",
                                  "text is null", None]
    expected = embedder.embed(["good text", "more good text"])
    np.testing.assert_allclose(np.stack([out["embedding"][0], out["embedding"][6]]), expected, atol=1e-5)
    assert out["embedding"][1] is None and out["token_count"][1] == 0
    assert list(out["truncated"]) == [False] * 7


def test_a_row_that_breaks_the_model_is_isolated(monkeypatch, embedder):
    class Fragile:
        """The real embedder, except that it raises on one poisoned text."""

        def embed_with_counts(self, texts):
            if any("POISON" in t for t in texts):
                raise RuntimeError("cannot embed this")
            return embedder.embed_with_counts(texts)

    monkeypatch.setattr(embed_module, "get_engine", lambda kind, ref, stores, device, budget: Fragile())
    out = embed_series(pd.Series(["fine", "POISON pill", "also fine"]), "unused", "cpu")
    assert out["error"][1] == "embedding failed: RuntimeError: cannot embed this"
    assert out["error"][0] is None and out["error"][2] is None
    assert out["embedding"][0] is not None and out["embedding"][2] is not None


def test_unknown_model_dir_fails_with_the_fix(tmp_path):
    from mlabatch.models.registry.resolve import ModelNotFoundError, resolve_model

    with pytest.raises(ModelNotFoundError, match="models prepare"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(str(tmp_path))


INVISIBLE_ONLY = ["\u200b\u200c\u200d", "\u2060\ufeff", "\x00\x07\x1b", "\u00ad \u2028\u2029\t"]


def test_texts_that_show_nothing_are_empty_for_embedding_and_chunking(minilm_dir):
    from mlabatch.udfs.chunk import chunk_documents

    out = embed_series(pd.Series(INVISIBLE_ONLY + ["zero\u200bwidth inside"]), str(minilm_dir), "cpu")
    assert list(out["error"]) == ["text is empty or whitespace"] * 4 + [None]
    assert out["embedding"][4] is not None

    docs = pd.DataFrame({"id": ["a", "b"], "text": [INVISIBLE_ONLY[0], "visible"], "content_hash": ["h1", "h2"],
                         "doc_error": [None, None]})
    chunks = next(chunk_documents(str(minilm_dir), 128, 16, 4)(iter([docs])))
    # "a" is not split but passes through as chunk 0 with no tokens, for the embed UDF to give it its error
    assert chunks[["id", "chunk", "n_tokens"]].values.tolist() == [["a", 0, 0], ["b", 0, 3]]


def test_prompts_that_show_nothing_never_reach_the_generator(monkeypatch):
    from mlabatch.models.generation.config import SamplingParams
    from mlabatch.models.generation.engine import Output
    from mlabatch.udfs import generate as generate_module

    class Echo:
        def generate(self, prompts, sampling):
            assert all(p == "a real prompt" for p in prompts)
            return [Output(p, [1], 3, 1, "length", False) for p in prompts]

    monkeypatch.setattr(generate_module, "get_engine", lambda kind, ref, stores, device, engine: Echo())
    out = generate_module.generate_series(pd.Series(INVISIBLE_ONLY + ["a real prompt"]), "unused", "cpu",
                                          SamplingParams())
    assert list(out["error"]) == ["prompt is empty or whitespace"] * 4 + [None]
    assert out["text"][4] == "a real prompt"
