"""Which values a UDF can work on: shared by the embedding and generation UDFs and the chunker."""
from __future__ import annotations

import unicodedata

import pandas as pd

# Unicode categories that show nothing: control and format characters (zero-width spaces, joiners, BOM,
# soft hyphen), and space, line and paragraph separators.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def _is_blank(text: str) -> bool:
    """True when `text` shows nothing: empty, or only whitespace and invisible characters.

    A model would still embed such a text (to the same meaningless vector each time) or continue it,
    so it is treated as empty. Stops at the first visible character, so ordinary texts cost nothing.
    """
    return all(c.isspace() or unicodedata.category(c) in INVISIBLE_CATEGORIES for c in text)


def input_error(value: object, what: str = "text") -> str | None:
    """Why `value` cannot be used as a non-empty string (null, not a string, blank), or None if it can."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return f"{what} is null"
    if not isinstance(value, str):
        return f"{what} is a {type(value).__name__}, not a string"
    if _is_blank(value):
        return f"{what} is empty or whitespace"
    return None
