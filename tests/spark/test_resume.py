"""Runs commit in increments: a killed run resumes, loses and duplicates nothing, and its MLflow run ends
FAILED; a run that would delete too much of the target stops before writing; the README's undo works."""
import hashlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from deltalake import DeltaTable
from pydoc_data.topics import topics

from mlabatch.jobs.cli import main
from mlabatch.jobs.embed import run_embed
from mlabatch.pipelines.incremental import DeletionGuardError
from mlabatch.pipelines.tracking import ABANDONED_TAG, PID_TAG

README = Path(__file__).resolve().parents[2] / "README.md"


def target_rows(table: str) -> dict[tuple[str, int], dict]:
    rows = DeltaTable(table).to_pyarrow_table().to_pylist()
    keyed = {(r["id"], r["chunk"]): r for r in rows}
    assert len(keyed) == len(rows), "duplicate (id, chunk) keys in the target"
    return keyed


def conf_file(settings, path: Path) -> str:
    """The settings as a YAML overlay, so a `mlabatch` subprocess runs with exactly these."""
    path.write_text(yaml.safe_dump(settings.model_dump()))
    return str(path)


def kill_after_first_commit(settings, conf: str, log: Path) -> int:
    """Run `mlabatch embed` in a subprocess and SIGKILL it (its JVM and Python workers too) as soon as
    the target has a new Delta version; returns the killed process id."""
    table = settings.target.table
    start = DeltaTable(table).version()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlabatch.jobs.cli", "embed", "--conf", conf],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while DeltaTable(table).version() == start:
            assert proc.poll() is None, f"the run ended before its first commit:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no increment committed within 10 minutes"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.pid


def test_a_killed_run_resumes_redoing_at_most_one_increment(spark, make_settings, write_source, tmp_path,
                                                             caplog):
    long_docs = {f"t-{name}": topics[name][:1500] for name in sorted(topics) if len(topics[name]) > 2500}
    assert len(long_docs) >= 24
    settings = make_settings("target.ids_per_increment=4")
    write_source(settings.source.table, long_docs)
    run_embed(make_settings())  # the first run, in one increment
    reference = make_settings(f"target.table={tmp_path}/reference")  # uninterrupted, in one increment
    shutil.copytree(settings.target.table, reference.target.table)

    # Every document is shortened (its old chunks 1.. must go), two are deleted, two are new.
    edited = {doc_id: text[:300] for doc_id, text in long_docs.items()}
    for doc_id in sorted(edited)[:2]:
        del edited[doc_id]
    edited.update({"new-1": "A document added after the first run.", "new-2": "Another one."})
    write_source(settings.source.table, edited)

    pid = kill_after_first_commit(settings, conf_file(settings, tmp_path / "run.yml"), tmp_path / "killed.log")
    at_kill = target_rows(settings.target.table)
    new_hash = {doc_id: hashlib.sha256(text.encode()).hexdigest() for doc_id, text in edited.items()}
    committed = {doc_id for (doc_id, _), row in at_kill.items() if row["content_hash"] == new_hash.get(doc_id)}
    assert 0 < len(committed) < len(edited), "the kill did not land between increments"
    # A committed document keeps its outgrown chunks until the deletions at the end: the resumed run must find them.
    assert any(doc_id in committed and row["content_hash"] != new_hash[doc_id] for (doc_id, _), row in at_kill.items())

    killed = [r for r in mlflow.search_runs(filter_string="attributes.status = 'RUNNING'", output_format="list")
              if r.data.tags.get(PID_TAG) == str(pid)]
    assert len(killed) == 1, "the killed run should be left RUNNING until the next run"

    with caplog.at_level(logging.INFO, logger="mlabatch.pipelines.incremental"):
        stats, _ = run_embed(settings)
    assert stats.new == len(edited) - len(committed)  # only what the killed run had not committed
    assert stats.deleted == 2 and stats.increments > 1
    assert re.search(rf"increment {stats.increments}/{stats.increments}: \d+ ids, merged", caplog.text)

    run_embed(reference)
    got, want = target_rows(settings.target.table), target_rows(reference.target.table)
    assert sorted(got) == sorted(want)
    assert {doc_id for doc_id, _ in got} == set(edited)
    for key, row in want.items():
        assert (got[key]["chunk_text"], got[key]["content_hash"]) == (row["chunk_text"], row["content_hash"])
        np.testing.assert_allclose(got[key]["embedding"], row["embedding"], atol=1e-5)

    abandoned = mlflow.get_run(killed[0].info.run_id)
    assert abandoned.info.status == "FAILED"
    assert "killed" in abandoned.data.tags[ABANDONED_TAG]


def test_a_run_that_would_delete_too_much_stops_before_writing(spark, make_settings, write_source, tmp_path, capsys):
    settings = make_settings()
    docs = {f"doc-{i}": f"Document number {i} of ten." for i in range(10)}
    write_source(settings.source.table, docs)
    run_embed(settings)
    version = DeltaTable(settings.target.table).version()

    remaining = {doc_id: text for doc_id, text in docs.items() if doc_id not in ("doc-1", "doc-2")}
    write_source(settings.source.table, dict(remaining, added="A new document."))
    with pytest.raises(DeletionGuardError, match=r"2 of the 10 ids .* \(20.0%\)") as err:
        run_embed(settings)
    assert "--set target.max_delete_fraction=1.0" in str(err.value)
    assert DeltaTable(settings.target.table).version() == version  # nothing written, not even the new document

    assert main(["embed", "-q", "--conf", conf_file(settings, tmp_path / "run.yml")]) == 1
    assert "target.max_delete_fraction" in capsys.readouterr().err
    assert DeltaTable(settings.target.table).version() == version

    stats, _ = run_embed(make_settings("target.max_delete_fraction=0.2"))
    assert (stats.deleted, stats.new) == (2, 1)
    assert {doc_id for doc_id, _ in target_rows(settings.target.table)} == set(remaining) | {"added"}


def test_the_readme_undoes_a_run_with_delta_restore(spark, make_settings, write_source):
    settings = make_settings("target.max_delete_fraction=1.0")
    write_source(settings.source.table, {"a": "The first document.", "b": "The second.", "c": topics["for"]})
    run_embed(settings)
    before = DeltaTable(settings.target.table)
    before_rows = target_rows(settings.target.table)
    write_source(settings.source.table, {"a": "The first document, edited.", "d": "A new one."})
    run_embed(settings)
    assert target_rows(settings.target.table).keys() != before_rows.keys()

    section = README.read_text().split("### Undoing a run", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    code, paths = re.subn(r'"data/tables/document_embeddings"', repr(settings.target.table), code)
    code, versions = re.subn(r"\.restore\(\d+\)", f".restore({before.version()})", code)
    assert (paths, versions) == (1, 1), "the README's restore example changed shape"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "MERGE" in done.stdout and "WRITE" in done.stdout

    after = target_rows(settings.target.table)
    assert after.keys() == before_rows.keys()
    assert all(after[key]["embedding"] == row["embedding"] for key, row in before_rows.items())
