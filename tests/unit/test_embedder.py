"""The embedder equals sentence-transformers' all-MiniLM-L6-v2 (float32, CPU) on every kind of text."""
import numpy as np
import pytest
from pydoc_data.topics import topics

TEXTS = [
    "A short sentence.",
    "",
    "Grüße aus Zürich! 日本語のテキスト, emoji 🚀 and مرحبا بالعالم.",
    topics["class"],  # far over 256 tokens: truncated the same way
    "   leading and trailing spaces   ",
    "x",
] + [topics[k][:n] for k, n in [("if", 300), ("for", 900), ("while", 50)]]


@pytest.fixture(scope="module")
def reference(minilm_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_dir), device="cpu")
    return model.encode(TEXTS, batch_size=4, convert_to_numpy=True)


def _cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("token_budget", [1, 300, 4096])  # one text per batch, a few, all at once
def test_matches_sentence_transformers(minilm_dir, reference, token_budget):
    from mlabatch.models.loading import load_model

    ours = load_model(minilm_dir, "cpu", token_budget=token_budget).embed(TEXTS)
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 384)
    assert _cosine(ours, reference).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_counts_and_truncation(embedder):
    result = embedder.embed_with_counts(["hello world", topics["class"], ""])
    assert result.token_counts[0] == 4  # [CLS] hello world [SEP]
    assert result.token_counts[1] == embedder.max_tokens == 256
    assert result.truncated == [False, True, False]
    assert result.token_counts[2] == 2


def test_order_is_kept_despite_length_sorting(embedder):
    texts = ["b " * 100, "a", "c " * 10]
    batched = embedder.embed(texts)
    for i, text in enumerate(texts):
        np.testing.assert_allclose(batched[i], embedder.embed([text])[0], atol=1e-5)
