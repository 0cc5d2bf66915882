"""The fast tokenizer of a model directory, shared by both engines and chunking."""
from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer


def load_tokenizer(model_dir: Path) -> Tokenizer:
    """The fast tokenizer of a model directory, with any fixed padding from tokenizer.json removed."""
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tokenizer.no_padding()  # the engines pack batches themselves
    return tokenizer
