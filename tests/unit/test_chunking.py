"""Token windows: bounded length, overlap, whole words, full coverage, and a cut flagged at max_chunks."""
from pydoc_data.topics import topics

from mlabatch.models.embedding.chunking import split_text

LONG = topics["class"] + "\n" + topics["for"]


def _count(tokenizer, text):
    tokenizer.no_truncation()
    return len(tokenizer.encode(text).ids)


def test_short_text_is_one_chunk(tokenizer):
    (chunk,) = split_text("hello world", tokenizer, 64, 8, 10)
    assert (chunk.index, chunk.text, chunk.n_tokens, chunk.truncated) == (0, "hello world", 4, False)


def test_windows_fit_and_retokenize_to_their_count(tokenizer):
    chunks = split_text(LONG, tokenizer, 64, 8, 1000)
    assert len(chunks) > 5
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.n_tokens <= 64
        assert _count(tokenizer, c.text) == c.n_tokens
    assert not any(c.truncated for c in chunks)


def test_windows_cover_every_word_and_overlap(tokenizer):
    chunks = split_text(LONG, tokenizer, 64, 8, 1000)
    spans, cursor = [], 0
    for c in chunks:  # each chunk is a slice of the text, in order
        start = LONG.index(c.text, cursor)
        spans.append((start, start + len(c.text)))
        cursor = start + 1
    assert spans[0][0] == 0 and spans[-1][1] == len(LONG.rstrip())
    for (_, end_a), (start_b, _) in zip(spans, spans[1:]):
        assert start_b < end_a  # consecutive windows overlap: no text falls between them


def test_cut_at_max_chunks_flags_the_last(tokenizer):
    chunks = split_text(LONG, tokenizer, 64, 8, 3)
    assert len(chunks) == 3
    assert [c.truncated for c in chunks] == [False, False, True]
