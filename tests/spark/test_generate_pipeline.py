"""The generation job end to end on local Spark with real Delta tables and a real MLflow store (tiny decoder)."""

from typing import Iterator

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from mlabatch.jobs.generate import run_generate
from mlabatch.models.generation.engine import load_generator
from mlabatch.pipelines.generation import engine_config, sampling_params
from mlabatch.pipelines.incremental import DeletionGuardError

PROMPTS = {
    "p-short": "Spark pandas UDFs stream Arrow batches",
    "p-long": "Delta tables keep a transaction log; " * 12,
    "p-unicode": "Grüße aus Zürich! 日本語 🚀",
    "p-empty": "",
    "p-null": None,
    "p-four": "one two three four",
}


def _write(path, prompts: dict, extra: list[tuple] = ()) -> None:
    rows = [{"id": k, "prompt": v} for k, v in prompts.items()] + [{"id": i, "prompt": p} for i, p in extra]
    write_deltalake(str(path), pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("prompt", pa.string())])),
                    mode="overwrite")


@pytest.fixture()
def gen_settings(make_settings, tiny_decoder_dir, tmp_path):
    def make(*overrides: str):
        return make_settings(f"generate.source_table={tmp_path}/prompts", f"generate.target_table={tmp_path}/gens",
                             f"generate.model_uri={tiny_decoder_dir}", "generate.max_new_tokens=12",
                             "generate.num_blocks=64", "generate.max_batch=8", *overrides)
    return make


def _rows(settings) -> dict[str, dict]:
    rows = DeltaTable(settings.generate.target_table).to_pyarrow_table().to_pylist()
    keyed = {r["id"]: r for r in rows}
    assert len(keyed) == len(rows), "duplicate ids in the target"
    return keyed


def test_generate_job_rows_errors_rerun_and_edits(spark, gen_settings, tiny_decoder_dir):
    settings = gen_settings("generate.temperature=0.8", "generate.seed=5")
    _write(settings.generate.source_table, PROMPTS, extra=[("dup", "a"), ("dup", "b")])
    stats, run_id = run_generate(settings)
    rows = _rows(settings)
    assert set(rows) == set(PROMPTS) | {"dup"}
    assert rows["p-null"]["error"] == "prompt is null" and rows["p-null"]["text"] is None
    assert rows["p-empty"]["error"] == "prompt is empty or whitespace"
    assert rows["dup"]["error"].startswith("id appears 2 times")
    direct = load_generator(tiny_decoder_dir, "cpu", engine_config(settings.generate))
    good = ["p-short", "p-long", "p-unicode", "p-four"]
    want = direct.generate([PROMPTS[k] for k in good], sampling_params(settings.generate))
    for key, out in zip(good, want):
        assert (rows[key]["text"], rows[key]["generated_tokens"], rows[key]["finish_reason"]) == (
            out.text, out.generated_tokens, out.finish_reason)
        assert rows[key]["error"] is None and rows[key]["prompt_tokens"] == out.prompt_tokens
    assert (stats.rows_read, stats.duplicate_ids, stats.errors, stats.new) == (8, 1, 3, 7)

    import mlflow

    assert mlflow.get_run(run_id).data.metrics["generated_tokens"] == sum(o.generated_tokens for o in want)
    # one engine run per task, each reporting its prompts and tokens; together they are the run's
    assert sum(t.items for t in stats.tasks) == stats.new
    assert sum(t.tokens_out for t in stats.tasks) == stats.generated_tokens
    assert sum(t.tokens_in for t in stats.tasks) == stats.prompt_tokens
    assert all(0 < t.engine_share <= 1 for t in stats.tasks if t.tokens_out)

    stats, _ = run_generate(settings)
    assert (stats.new, stats.deleted) == (0, 0)
    assert DeltaTable(settings.generate.target_table).version() == 0

    edited = dict(PROMPTS, **{"p-four": "five six seven"})
    del edited["p-unicode"]
    _write(settings.generate.source_table, edited, extra=[("dup", "a"), ("dup", "b")])
    with pytest.raises(DeletionGuardError, match="generate.max_delete_fraction"):  # 1 of 7 ids is more than 10%
        run_generate(settings)
    assert DeltaTable(settings.generate.target_table).version() == 0
    stats, _ = run_generate(gen_settings("generate.temperature=0.8", "generate.seed=5",
                                         "generate.max_delete_fraction=0.2"))
    assert (stats.new, stats.deleted) == (1, 1)
    after = _rows(settings)
    assert "p-unicode" not in after and after["p-four"]["prompt"] == "five six seven"

    stats, _ = run_generate(gen_settings("generate.temperature=0.8", "generate.seed=6"))
    assert stats.new == len(edited) + 1  # new sampling settings regenerate every row (and "dup")


def test_a_retried_task_loses_and_duplicates_nothing(spark, gen_settings, tmp_path):
    from pyspark import TaskContext

    from mlabatch.udfs.generate import generate_prompts_worker

    settings = gen_settings("generate.temperature=1.0", "generate.seed=3")
    cfg = settings.generate
    failures = tmp_path / "failures"
    failures.mkdir()
    real = generate_prompts_worker(cfg.model_uri, sampling_params(cfg), engine_config(cfg), "cpu")

    def flaky(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        context = TaskContext.get()
        for rows in real(batches):
            yield rows
            if context.attemptNumber() == 0 and context.partitionId() % 2 == 0:
                (failures / f"partition-{context.partitionId()}").touch()
                raise RuntimeError("simulated executor loss after the first batch")

    _write(cfg.source_table, PROMPTS)
    reference = gen_settings("generate.temperature=1.0", "generate.seed=3",
                             f"generate.target_table={cfg.target_table}_reference")
    run_generate(reference)
    stats, _ = run_generate(settings, worker=flaky)
    assert len(list(failures.iterdir())) >= 1, "no task failed: the test did not exercise a retry"
    got, want = _rows(settings), _rows(reference)
    assert sorted(got) == sorted(want) and stats.new == len(want)
    for key in want:
        assert (got[key]["text"], got[key]["error"]) == (want[key]["text"], want[key]["error"])
