"""Token windows: bounded length, overlap, whole words, full coverage, a cut flagged at max_chunks, and the
same windows as the chunking before tokenize-once (chunking_oracle)."""
from pydoc_data.topics import topics

from chunking_oracle import split_text
from mlabatch.models.embedding.chunking import Chunker

LONG = topics["class"] + "\n" + topics["for"]


def _count(tokenizer, text):
    tokenizer.no_truncation()
    return len(tokenizer.encode(text).ids)


def test_short_text_is_one_chunk_with_its_special_tokens(tokenizer):
    ((chunk,),) = Chunker(tokenizer, 64, 8, 10).split(["hello world"])
    assert (chunk.index, chunk.text, chunk.n_tokens, chunk.truncated) == (0, "hello world", 4, False)
    assert chunk.ids == tokenizer.encode("hello world").ids  # [CLS] hello world [SEP]


def test_windows_fit_and_retokenize_to_their_ids(tokenizer):
    (chunks,) = Chunker(tokenizer, 64, 8, 1000).split([LONG])
    assert len(chunks) > 5
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.n_tokens <= 64
        tokenizer.no_truncation()
        assert tokenizer.encode(c.text).ids == c.ids  # the text cut by offsets is exactly the window
    assert not any(c.truncated for c in chunks)


def test_windows_cover_every_word_and_overlap(tokenizer):
    (chunks,) = Chunker(tokenizer, 64, 8, 1000).split([LONG])
    spans, cursor = [], 0
    for c in chunks:  # each chunk is a slice of the text, in order
        start = LONG.index(c.text, cursor)
        spans.append((start, start + len(c.text)))
        cursor = start + 1
    assert spans[0][0] == 0 and spans[-1][1] == len(LONG.rstrip())
    for (_, end_a), (start_b, _) in zip(spans, spans[1:]):
        assert start_b < end_a  # consecutive windows overlap: no text falls between them


def test_cut_at_max_chunks_flags_the_last(tokenizer):
    (chunks,) = Chunker(tokenizer, 64, 8, 3).split([LONG])
    assert len(chunks) == 3
    assert [c.truncated for c in chunks] == [False, False, True]


def test_same_windows_as_before_for_every_text_of_a_batch(tokenizer):
    texts = [LONG, "short one", topics["while"], " ".join(topics.values())[:200_000], "Grüße 日本語 🚀 " * 40]
    for max_tokens, overlap, max_chunks in ((64, 8, 1000), (128, 16, 64), (256, 32, 5)):
        for text, chunks in zip(texts, Chunker(tokenizer, max_tokens, overlap, max_chunks).split(texts)):
            before = split_text(text, tokenizer, max_tokens, overlap, max_chunks)
            assert [(c.index, c.text, c.n_tokens, c.truncated) for c in chunks] == \
                   [(c.index, c.text, c.n_tokens, c.truncated) for c in before]


def test_a_window_too_small_for_the_overlap_names_the_settings(tokenizer):
    import pytest

    with pytest.raises(ValueError, match="overlap_tokens"):
        Chunker(tokenizer, 10, 8, 4)


def test_encoding_on_threads_gives_what_one_call_gives(tokenizer):
    from mlabatch.models.tokenizer import TEXTS_PER_THREAD, encode_batch

    texts = [topics[k] for k in sorted(topics)][: TEXTS_PER_THREAD * 4]
    tokenizer.no_truncation()
    assert [e.ids for e in encode_batch(tokenizer, texts)] == [e.ids for e in tokenizer.encode_batch(texts)]
    assert [e.offsets for e in encode_batch(tokenizer, texts, False)] == \
           [e.offsets for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def test_flat_windows_are_the_chunks_and_the_stream_keeps_batch_order(tokenizer):
    texts = [LONG, "short one", "", topics["while"], "Grüße 日本語 🚀 " * 40]
    chunker = Chunker(tokenizer, 64, 8, 5)
    chunks = [c for text_chunks in chunker.split(texts) for c in text_chunks]
    windows = chunker.windows(texts, chunker.encode(texts))
    assert len(windows) == len(chunks) and windows.owner.tolist() == sorted(windows.owner.tolist())
    assert windows.texts(texts) == [c.text for c in chunks]
    assert windows.index.tolist() == [c.index for c in chunks]
    assert windows.truncated.tolist() == [c.truncated for c in chunks]
    assert windows.n_tokens.tolist() == [c.n_tokens for c in chunks]
    assert [windows.sequences[w].tolist() for w in range(len(windows))] == [c.ids for c in chunks]
    streamed = list(chunker.stream((k, texts[k:k + 2]) for k in range(0, len(texts), 2)))
    assert [k for k, _ in streamed] == [0, 2, 4]
    assert [t for k, w in streamed for t in w.texts(texts[k:k + 2])] == [c.text for c in chunks]
    assert len(chunker.windows([], chunker.encode([]))) == 0
