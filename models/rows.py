"""Model results as table rows: the bad-input rules, the per-row retry and the columns both faces return.

Shared by the Spark UDFs (udfs.embed, udfs.generate) and the MLflow pyfuncs
(models.registry), so `embed_udf` and `mlflow.pyfunc.spark_udf` on a registered model give the same
columns for the same values. Pure pandas: no Spark here.

Values a model cannot take (null, not a string, blank) get an error without reaching it. If the
embedder fails on a batch, each row is retried alone, so only the row that breaks it gets an error.
Generation runs all of a task's prompts in one engine run: an engine failure there fails the task,
which Spark retries (a row's text depends only on its prompt and settings, so retries repeat it).
"""
from __future__ import annotations

import unicodedata
from collections import deque
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, TypeVar

import pandas as pd

from mlabatch.models.background import in_background

if TYPE_CHECKING:
    from mlabatch.models.embedding.engine import Embedder
    from mlabatch.models.generation.config import SamplingParams
    from mlabatch.models.generation.engine import Generator

# The columns of one embedded / generated row, as a Spark struct type string (also the `result_type`
# to hand `mlflow.pyfunc.spark_udf` for a registered model).
EMBED_RESULT_TYPE = "embedding array<float>, token_count int, truncated boolean, error string"
GENERATE_RESULT_TYPE = ("text string, prompt_tokens int, generated_tokens int, finish_reason string, "
                        "truncated boolean, error string")

# Unicode categories that show nothing: control and format characters (zero-width spaces, joiners, BOM,
# soft hyphen), and space, line and paragraph separators.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})

Result = TypeVar("Result")


def _is_blank(text: str) -> bool:
    """True when `text` shows nothing: empty, or only whitespace and invisible characters.

    A model would still embed such a text (to the same meaningless vector each time) or continue it,
    so it is treated as empty. Stops at the first visible character, so ordinary texts cost nothing.
    """
    return all(c.isspace() or unicodedata.category(c) in INVISIBLE_CATEGORIES for c in text)


def input_error(value: object, what: str = "text") -> str | None:
    """Why `value` cannot be used as a non-empty string (null, not a string, blank), or None if it can."""
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return f"{what} is null"
    if not isinstance(value, str):
        return f"{what} is a {type(value).__name__}, not a string"
    if _is_blank(value):
        return f"{what} is empty or whitespace"
    return None


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


def embedding_rows(texts: pd.Series, embedder: Embedder) -> pd.DataFrame:
    """The EMBED_RESULT_TYPE columns for `texts`, embedded as one batch; bad rows get an error, no vector."""
    def embed(batch: list[str]) -> list[tuple]:
        result = embedder.embed_with_counts(batch)
        return list(zip(result.embeddings, result.token_counts, result.truncated))

    rows, errors = run_rows(texts, embed, "text", "embedding failed")
    return pd.DataFrame({
        "embedding": [r[0] if r else None for r in rows],
        "token_count": [r[1] if r else 0 for r in rows],
        "truncated": [r[2] if r else False for r in rows],
        "error": errors,
    })


def generation_frames(batches: Iterable[pd.Series], generator: Generator, sampling: SamplingParams
                      ) -> Iterator[pd.DataFrame]:
    """GENERATE_RESULT_TYPE frames, one per batch of prompts and in order, from one engine run over all of them.

    The next batches are tokenized on a background thread and join the running batch as slots free
    up, so the decode batch stays full until the input ends. Bad prompts get an error, no text.
    """
    def prepare(prompts: pd.Series) -> _PromptBatch:
        batch = _PromptBatch(prompts, [input_error(v, "prompt") for v in prompts])
        for i, error in enumerate(batch.errors):
            if error is None:
                try:
                    batch.seqs[i] = generator.prepare(i, prompts.iat[i], sampling)
                except ValueError as err:  # a prompt with no tokens at all
                    batch.errors[i] = f"generation failed: {err}"
        return batch

    open_batches: deque[_PromptBatch] = deque()
    owner: dict[int, tuple[_PromptBatch, int]] = {}

    def feed() -> Iterator:
        for batch in in_background(lambda: map(prepare, batches), depth=2):
            open_batches.append(batch)
            for i, seq in batch.seqs.items():
                owner[id(seq)] = (batch, i)
                yield seq

    for seq, output in generator.generate_stream(feed()):
        batch, i = owner.pop(id(seq))
        batch.outputs[i] = output
        while open_batches and open_batches[0].complete:
            yield open_batches.popleft().frame()
    while open_batches:  # batches read after the last output: nothing of theirs reached the engine
        yield open_batches.popleft().frame()


def generation_rows(prompts: pd.Series, generator: Generator, sampling: SamplingParams) -> pd.DataFrame:
    """The GENERATE_RESULT_TYPE columns for `prompts`, continued in one engine run; bad rows get an error, no text."""
    return next(generation_frames([prompts], generator, sampling))


class _PromptBatch:
    """One batch of prompts on its way through the engine: their sequences, errors and outputs by row."""

    def __init__(self, prompts: pd.Series, errors: list[str | None]) -> None:
        self.prompts, self.errors = prompts, errors
        self.seqs: dict = {}  # row -> Sequence, for the rows that reach the engine
        self.outputs: dict = {}  # row -> Output

    @property
    def complete(self) -> bool:
        return len(self.outputs) == len(self.seqs)

    def frame(self) -> pd.DataFrame:
        rows = [self.outputs.get(i) for i in range(len(self.prompts))]
        return pd.DataFrame({
            "text": [o.text if o else None for o in rows],
            "prompt_tokens": [o.prompt_tokens if o else 0 for o in rows],
            "generated_tokens": [o.generated_tokens if o else 0 for o in rows],
            "finish_reason": [o.finish_reason if o else None for o in rows],
            "truncated": [o.truncated if o else False for o in rows],
            "error": self.errors,
        })
