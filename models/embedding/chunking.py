"""Split texts into overlapping token windows that start and end on word boundaries, tokenizing each text once.

The windows carry their token ids (with the model's special tokens around them), so the encoder runs
them as they are; the window's text is cut from the document by the tokenizer's character offsets.
`Chunker.windows` gives a batch's windows as flat arrays (`Windows`): no Python object per window or
token on the hot path; `Chunker.split` gives them as `Chunk` objects, per text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence, TypeVar

import numpy as np
from tokenizers import Encoding, Tokenizer

from mlabatch.models.background import in_background
from mlabatch.models.embedding.batching import Sequences
from mlabatch.models.tokenizer import encode_batch

Tag = TypeVar("Tag")


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


@dataclass
class Windows:
    """The windows of a batch of texts, text after text, as flat arrays (window w is `sequences[w]`)."""

    sequences: Sequences  # every window's token ids, special tokens included
    owner: np.ndarray  # int64 [W]: the text each window belongs to
    index: np.ndarray  # int32 [W]: the window's number within its text
    truncated: np.ndarray  # bool [W]: the last kept window of a text cut at max_chunks
    start: np.ndarray  # int64 [W]: the window's text is text[start:end] (character offsets)
    end: np.ndarray  # int64 [W]

    def __len__(self) -> int:
        return len(self.owner)

    @property
    def n_tokens(self) -> np.ndarray:
        """int64 [W]: tokens the encoder sees per window, special tokens included."""
        return self.sequences.lengths

    def texts(self, texts: Sequence[str]) -> list[str]:
        """Each window's text, cut from its document (a whole document is the document's own string)."""
        return [texts[o][a:b] for o, a, b in zip(self.owner.tolist(), self.start.tolist(), self.end.tolist())]


def _special_tokens(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a single text ([CLS] / [SEP], <s> / </s>)."""
    probe = tokenizer.encode("a", add_special_tokens=True)
    mask = probe.special_tokens_mask
    first = mask.index(0)
    last = len(mask) - mask[::-1].index(0)
    return probe.ids[:first], probe.ids[last:]


def _word_start(encoding: Encoding, i: int, floor: int) -> int:
    """The first token at or before `i` (not below `floor`) that starts a word."""
    word = encoding.token_to_word(i)
    while i > floor and word is not None and (previous := encoding.token_to_word(i - 1)) == word:
        i, word = i - 1, previous
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

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        """The texts tokenized without special tokens or truncation, in one batched call (on every core)."""
        self.tokenizer.no_truncation()
        return encode_batch(self.tokenizer, list(texts), add_special_tokens=False)

    def windows(self, texts: Sequence[str], encodings: Sequence[Encoding]) -> Windows:
        """The windows of each text, from its encoding (`encode`). Holds the GIL: reading the ids out of
        the Rust encodings is most of it; boundaries are found only in texts longer than one window."""
        whole = Sequences.from_lists([e.ids for e in encodings])  # each .ids read converts the list from Rust
        lengths = whole.lengths
        owner, first, last, index, truncated = [], [], [], [], []
        for doc in np.flatnonzero(lengths > self.width).tolist():
            bounds = self._bounds(encodings[doc], int(lengths[doc]))
            owner += [doc] * len(bounds)
            first += [s for s, _ in bounds]
            last += [e for _, e in bounds]
            index += range(len(bounds))
            truncated += [False] * (len(bounds) - 1) + [bounds[-1][1] < lengths[doc]]
        # Texts that fit are one window each, the whole text; long ones' windows slot in, in text order.
        short = np.flatnonzero(lengths <= self.width)
        owner = np.concatenate([short, np.asarray(owner, dtype=np.int64)])
        order = np.argsort(owner, kind="stable")
        owner = owner[order]
        first = np.concatenate([np.zeros(len(short), np.int64), np.asarray(first, dtype=np.int64)])[order]
        last = np.concatenate([lengths[short], np.asarray(last, dtype=np.int64)])[order]
        long_windows = order >= len(short)
        start, end = np.zeros(len(owner), np.int64), np.fromiter(
            (len(texts[o]) for o in owner.tolist()), dtype=np.int64, count=len(owner))
        for w in np.flatnonzero(long_windows).tolist():
            encoding = encodings[owner[w]]
            start[w], end[w] = encoding.token_to_chars(int(first[w]))[0], encoding.token_to_chars(int(last[w]) - 1)[1]
        sequences = Sequences.from_spans(whole.ids, whole.cu[owner] + first, last - first, self.prefix, self.suffix)
        return Windows(sequences, owner,
                       np.concatenate([np.zeros(len(short), np.int32), np.asarray(index, dtype=np.int32)])[order],
                       np.concatenate([np.zeros(len(short), bool), np.asarray(truncated, dtype=bool)])[order],
                       start, end)

    def _bounds(self, encoding: Encoding, n: int) -> list[tuple[int, int]]:
        """[start, end) token spans of the windows of a text of n > width tokens."""
        bounds: list[tuple[int, int]] = []
        start = 0
        while start < n and len(bounds) < self.max_chunks:
            end = min(start + self.width, n)
            if end < n:
                end = _word_start(encoding, end, start + 1)  # do not cut a word in two
            bounds.append((start, end))
            if end >= n:
                break
            start = _word_start(encoding, max(end - self.overlap, start + 1), start + 1)
        return bounds

    def stream(self, batches: Iterable[tuple[Tag, Sequence[str]]], depth: int = 2) -> Iterator[tuple[Tag, Windows]]:
        """(tag, windows of texts) per batch: the next batches are tokenized on a background thread (the Rust
        tokenizer, on every core, without the GIL) while this thread cuts the current one into windows."""
        encoded = in_background(lambda: ((tag, texts, self.encode(texts)) for tag, texts in batches), depth)
        for tag, texts, encodings in encoded:
            yield tag, self.windows(texts, encodings)

    def split(self, texts: Sequence[str]) -> list[list[Chunk]]:
        """The windows of each text as Chunk objects, tokenizing all texts in one batched call (on every core)."""
        texts = list(texts)
        windows = self.windows(texts, self.encode(texts))
        chunks: list[list[Chunk]] = [[] for _ in texts]
        for w, (owner, text) in enumerate(zip(windows.owner.tolist(), windows.texts(texts))):
            chunks[owner].append(Chunk(int(windows.index[w]), text, windows.sequences[w].tolist(),
                                       bool(windows.truncated[w])))
        return chunks
