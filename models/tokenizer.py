"""The fast tokenizer of a model directory, shared by both engines and chunking, and batched encoding on every core."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path

from tokenizers import Encoding, Tokenizer


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The fast tokenizer of a model directory, with any fixed padding from tokenizer.json removed."""
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tokenizer.no_padding()  # the engines pack batches themselves
    return tokenizer


TEXTS_PER_THREAD = 64  # below this many texts per thread, one call is as fast
THREADS = min(os.cpu_count() or 1, 32)
_POOL = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="mlabatch-tokenize")  # threads start on first use


def encode_batch(tokenizer: Tokenizer, texts: list[str], add_special_tokens: bool = True) -> list[Encoding]:
    """`tokenizer.encode_batch` spread over the machine's cores by threads (the Rust tokenizer releases the
    GIL): fast even where the tokenizer's own parallelism is off (TOKENIZERS_PARALLELISM=false, or
    turned off after a fork, as in Spark's Python workers)."""
    parts = min(THREADS, len(texts) // TEXTS_PER_THREAD)
    if parts <= 1:
        return tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)
    size = -(-len(texts) // parts)
    slices = [texts[i:i + size] for i in range(0, len(texts), size)]
    return list(chain.from_iterable(_POOL.map(lambda s: tokenizer.encode_batch(s, add_special_tokens=add_special_tokens),
                                              slices)))
