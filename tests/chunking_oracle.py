"""The chunking of mlabatch before tokenize-once (issue 14), kept as the oracle the new path must match:
each document tokenized alone, its windows returned as text (the embed step then tokenized them again).
Importable as `chunking_oracle` from the tests (pytest puts tests/ on sys.path)."""
from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer


@dataclass(frozen=True)
class Chunk:
    """One window of a document: its index, text and token count (special tokens included)."""

    index: int
    text: str
    n_tokens: int
    truncated: bool  # True on the last kept window of a document cut at max_chunks


def _word_start(word_ids: list, i: int, floor: int) -> int:
    while i > floor and word_ids[i] is not None and word_ids[i] == word_ids[i - 1]:
        i -= 1
    return i


def split_text(text: str, tokenizer: Tokenizer, max_tokens: int, overlap: int, max_chunks: int) -> list[Chunk]:
    """Windows of at most `max_tokens` tokens (with the model's special tokens) sharing `overlap` tokens.

    A text that fits gives one chunk holding the whole text. Windows never split a word, so each
    window's text tokenizes back to the same tokens.
    """
    tokenizer.no_truncation()
    encoding = tokenizer.encode(text, add_special_tokens=False)
    width = max_tokens - tokenizer.num_special_tokens_to_add(False)
    specials = max_tokens - width
    n = len(encoding.ids)
    if n <= width:
        return [Chunk(0, text, n + specials, False)]
    words, offsets = encoding.word_ids, encoding.offsets
    chunks: list[Chunk] = []
    start = 0
    while start < n and len(chunks) < max_chunks:
        end = min(start + width, n)
        if end < n:
            end = _word_start(words, end, start + 1)  # do not cut a word in two
        chunk_text = text[offsets[start][0]:offsets[end - 1][1]]
        chunks.append(Chunk(len(chunks), chunk_text, end - start + specials, False))
        if end >= n:
            break
        start = _word_start(words, max(end - overlap, start + 1), start + 1)
    if chunks and (start < n and end < n):
        last = chunks[-1]
        chunks[-1] = Chunk(last.index, last.text, last.n_tokens, True)
    return chunks
