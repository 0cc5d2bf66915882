"""A sample documents table made from offline text: Python's reference docs (`pydoc_data.topics`).

Realistic and awkward on purpose: varied lengths, empty, whitespace-only and null texts, unicode,
and one very long document that has to be split into many windows and cut.
"""
from __future__ import annotations

import pyarrow as pa
from pydoc_data.topics import topics

SAMPLE_SCHEMA = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string())])


def sample_documents(long_doc_words: int = 60_000) -> pa.Table:
    """About 200 topics as documents, plus the awkward cases, with stable ids."""
    rows = [(f"topic-{name}", name.replace("-", " "), text.strip()) for name, text in sorted(topics.items())]
    words = " ".join(text for _, _, text in rows).split()
    rows += [
        ("edge-empty", "empty", ""),
        ("edge-whitespace", "whitespace only", "   \n\t  "),
        ("edge-null-1", "null text", None),
        ("edge-null-2", "another null text", None),
        ("edge-unicode", "unicode", "Grüße aus Zürich! Ωμέγα, 日本語のテキスト, emoji 🚀🌍, "
                                    "and a right-to-left phrase: مرحبا بالعالم."),
        ("edge-very-long", "very long document", " ".join(words[:long_doc_words])),
    ]
    return pa.Table.from_pylist([dict(zip(SAMPLE_SCHEMA.names, r)) for r in rows], schema=SAMPLE_SCHEMA)
