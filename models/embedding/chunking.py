"""Split texts into overlapping token windows that start and end on word boundaries, tokenizing each text once.

The windows carry their token ids (with the model's special tokens around them), so the encoder runs
them as they are; the window's text is cut from the document by the tokenizer's character offsets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from tokenizers import Encoding, Tokenizer

from mlabatch.models.tokenizer import encode_batch


@dataclass(frozen=True)
class Chunk:
    """One window of a document: its index, text, token ids (special tokens included) and their count."""

    index: int
    text: str
    ids: list[int]
    truncated: bool  # True on the last kept window of a document cut at max_chunks

    @property
    def n_tokens(self) -> int:
        """Tokens the encoder sees for this window, special tokens included."""
        return len(self.ids)


def _special_tokens(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a single text ([CLS] / [SEP], <s> / </s>)."""
    probe = tokenizer.encode("a", add_special_tokens=True)
    mask = probe.special_tokens_mask
    first = mask.index(0)
    last = len(mask) - mask[::-1].index(0)
    return probe.ids[:first], probe.ids[last:]


def _word_start(word_ids: list, i: int, floor: int) -> int:
    while i > floor and word_ids[i] is not None and word_ids[i] == word_ids[i - 1]:
        i -= 1
    return i


class Chunker:
    """Token windows of at most `max_tokens` tokens (special tokens included), consecutive ones sharing
    `overlap` tokens, at most `max_chunks` per text. Windows never split a word."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int, overlap: int, max_chunks: int) -> None:
        self.tokenizer = tokenizer
        self.prefix, self.suffix = _special_tokens(tokenizer)
        self.width = max_tokens - len(self.prefix) - len(self.suffix)
        if self.width <= overlap:
            raise ValueError(f"a window of {max_tokens} tokens leaves {self.width} for text, not more than the "
                             f"overlap of {overlap}; raise max_tokens or lower overlap_tokens")
        self.overlap, self.max_chunks = overlap, max_chunks

    def split(self, texts: Sequence[str]) -> list[list[Chunk]]:
        """The windows of each text, tokenizing all texts in one batched call (on every core)."""
        self.tokenizer.no_truncation()
        encodings = encode_batch(self.tokenizer, list(texts), add_special_tokens=False)
        return [self._windows(text, encoding) for text, encoding in zip(texts, encodings)]

    def _windows(self, text: str, encoding: Encoding) -> list[Chunk]:
        ids = encoding.ids  # each property read converts the whole list from Rust: read each once
        n = len(ids)
        if n <= self.width:  # the whole text, as it is
            return [Chunk(0, text, self.prefix + ids + self.suffix, False)]
        words, offsets = encoding.word_ids, encoding.offsets
        bounds: list[tuple[int, int]] = []
        start = end = 0
        while start < n and len(bounds) < self.max_chunks:
            end = min(start + self.width, n)
            if end < n:
                end = _word_start(words, end, start + 1)  # do not cut a word in two
            bounds.append((start, end))
            if end >= n:
                break
            start = _word_start(words, max(end - self.overlap, start + 1), start + 1)
        cut = end < n
        return [Chunk(i, text[offsets[s][0]:offsets[e - 1][1]], self.prefix + ids[s:e] + self.suffix,
                      cut and i == len(bounds) - 1) for i, (s, e) in enumerate(bounds)]
