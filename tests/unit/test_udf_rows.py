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
