"""Run a model over one batch of column values, row by row where it must: shared by both UDFs.

Values a model cannot take (null, not a string, blank) get an error without reaching it. If the
model fails on the batch, each row is retried alone, so only the row that breaks it gets an error
and the task never fails.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import pandas as pd

from mlabatch.udfs.inputs import input_error

Result = TypeVar("Result")


def run_rows(values: pd.Series, run: Callable[[list[str]], Sequence[Result]], what: str,
             failure: str) -> tuple[list[Result | None], list[str | None]]:
    """(result, error) lists, one entry per value: `run` maps texts to one result each.

    `what` names the value in input errors ("text is null"); `failure` starts the error of a row the
    model raised on ("embedding failed: RuntimeError: ...").
    """
    errors = [input_error(v, what) for v in values]
    results: list[Result | None] = [None] * len(values)
    _run(values, [i for i, e in enumerate(errors) if e is None], run, failure, results, errors)
    return results, errors


def _run(values: pd.Series, rows: list[int], run: Callable[[list[str]], Sequence[Result]], failure: str,
         results: list, errors: list) -> None:
    if not rows:
        return
    try:
        outputs = run([values.iat[i] for i in rows])
    except Exception as err:  # noqa: BLE001 - reported in the row's error, never kills the task
        if len(rows) == 1:
            errors[rows[0]] = f"{failure}: {type(err).__name__}: {err}"
            return
        for i in rows:
            _run(values, [i], run, failure, results, errors)
        return
    for i, output in zip(rows, outputs):
        results[i] = output
