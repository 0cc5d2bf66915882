"""Which values a UDF can work on: shared by the embedding and generation UDFs and the chunker."""
from __future__ import annotations

import pandas as pd


def input_error(value: object, what: str = "text") -> str | None:
    """Why `value` cannot be used as a non-empty string (null, not a string, blank), or None if it can."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return f"{what} is null"
    if not isinstance(value, str):
        return f"{what} is a {type(value).__name__}, not a string"
    if not value.strip():
        return f"{what} is empty or whitespace"
    return None
