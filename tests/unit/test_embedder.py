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
    from mlabatch.models.registry.load import load_model

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


def test_token_budgets_pack_sorted_batches_without_empty_rows():
    from mlabatch.models.embedding.batching import plan_batches

    lengths = [5, 0, 3, 9, 3, 2]
    batches = plan_batches(lengths, token_budget=8)
    assert batches == [[5, 2, 4], [0], [3]]  # ascending length; each batch <= 8 tokens unless one text alone
    assert sorted(i for b in batches for i in b) == [0, 2, 3, 4, 5]  # the zero-token text is left out


def test_text_without_tokens_embeds_to_zeros(minilm_dir):
    from mlabatch.models.registry.load import load_model

    model = load_model(minilm_dir, "cpu")  # its own tokenizer instance: changing it affects no other test
    model.tokenizer.post_processor = None  # no [CLS]/[SEP]: "" now has no tokens at all
    out = model.embed_with_counts(["", "words here"])
    assert out.token_counts[0] == 0 and not np.isnan(out.embeddings).any()
    assert np.abs(out.embeddings[0]).sum() == 0 and abs(np.linalg.norm(out.embeddings[1]) - 1) < 1e-5


def test_document_pooling_weights_windows_by_tokens(embedder):
    short, long = "A short document.", topics["class"]
    result = embedder.embed_documents([short, long], overlap=16, max_chunks=64)
    np.testing.assert_allclose(result.embeddings[0], embedder.embed([short])[0], atol=1e-5)

    (windows,) = embedder.chunker(overlap=16, max_chunks=64).split([long])
    parts = embedder.embed_with_counts([w.text for w in windows])
    manual = (parts.embeddings * np.array(parts.token_counts)[:, None]).sum(0)
    manual /= np.linalg.norm(manual)
    assert len(windows) > 1 and float(manual @ result.embeddings[1]) >= 0.99999
    assert result.token_counts[1] == sum(parts.token_counts) and result.truncated == [False, False]


def test_a_failure_on_the_host_threads_reaches_the_caller(minilm_dir):
    from mlabatch.models.registry.load import load_model

    model = load_model(minilm_dir, "cpu")
    with pytest.raises(TypeError):
        model.embed(["fine", 42])  # the tokenizer thread raises; the caller sees it, nothing hangs


def test_background_stage_stops_when_its_consumer_does():
    import threading
    import time

    from mlabatch.models.background import in_background

    before = threading.active_count()
    items = in_background(lambda: iter(range(10_000)), depth=2)
    assert next(items) == 0
    items.close()  # the consumer gives up early
    time.sleep(0.5)
    assert threading.active_count() == before


def test_flat_sequences_take_spans_and_pack_as_lists_did():
    import torch

    from mlabatch.models.embedding.batching import HostBatch, Sequences

    lists = [[5, 6, 7], [], [8], [9, 10]]
    sequences = Sequences.from_lists(lists)
    assert [sequences[i].tolist() for i in range(len(sequences))] == lists
    taken = sequences.take([3, 0, 1])
    assert [taken[i].tolist() for i in range(3)] == [[9, 10], [5, 6, 7], []]
    spans = Sequences.from_spans(np.arange(10), np.array([0, 2, 8]), np.array([3, 4, 0]), [101], [102, 103])
    assert [spans[i].tolist() for i in range(3)] == [[101, 0, 1, 2, 102, 103], [101, 2, 3, 4, 5, 102, 103],
                                                      [101, 102, 103]]
    batch = HostBatch.pack(sequences, [3, 0], pin=False)  # ids, then rows, then cumulative lengths
    assert batch.buffer.tolist() == [9, 10, 5, 6, 7, 3, 0, 0, 2, 5] and batch.tokens == 5 and batch.max_len == 3
    rows, ids, layout = batch.to(torch.device("cpu"))
    assert rows.tolist() == [3, 0] and layout.positions.tolist() == [0, 1, 0, 1, 2]
