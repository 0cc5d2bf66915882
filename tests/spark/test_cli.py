"""The `mlabatch` command line: help a newcomer can follow, errors with exit codes, real embed and demo runs."""
import subprocess
import sys

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from mlabatch.jobs.cli import main
from mlabatch.pipelines.checks import EMBED_COLUMNS
from mlabatch.pipelines.tables import table_columns


def test_help_lists_commands_exit_codes_and_unbroken_examples(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for word in ("demo", "embed", "models", "mlabatch demo", "--set", "exit codes", "2 invalid settings"):
        assert word in out
    assert "--set convert.d_rope=64 \\\n" in out  # the continued example keeps its line break


@pytest.mark.parametrize("command, sections, set_example", [
    (["embed"], ["source", "target", "model", "embed", "mlflow", "spark"], "--set embed."),
    (["demo"], ["source", "target", "model", "embed", "mlflow", "spark"], "--set embed."),
    (["generate"], ["generate", "mlflow", "spark"], "--set generate."),
    (["convert"], ["convert", "mlflow"], "--set convert."),
    (["models", "prepare"], ["model", "mlflow"], "--set model."),
])
def test_each_command_help_lists_its_settings_and_an_example(capsys, command, sections, set_example):
    from mlabatch.jobs.config import load_settings

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    defaults = load_settings()
    for section in sections:
        for name, field in type(getattr(defaults, section)).model_fields.items():
            assert f"  {section}.{name} (" in out
            if field.description:
                assert field.description in out
    assert set_example in " ".join(out.split("settings (")[0].split())  # the --set option's own example
    assert f"example:\n  mlabatch {' '.join(command)}" in out


def test_bad_setting_exits_2_naming_the_key(capsys):
    assert main(["embed", "--set", "embed.batch_sise=4"]) == 2
    err = capsys.readouterr().err
    assert "embed.batch_sise" in err and "unknown key" in err


def test_sample_data_is_no_setting_any_more(capsys):
    assert main(["embed", "--set", "source.build_sample_if_missing=true"]) == 2
    assert "source.build_sample_if_missing: unknown key" in capsys.readouterr().err


def test_quiet_embed_prints_the_summary_and_no_spark_noise(make_settings, documents, write_source):
    """A separate process, so that the JVM starts with -q (a test's shared session has started already)."""
    settings = make_settings()
    write_source(settings.source.table, documents())
    args = [sys.executable, "-m", "mlabatch.jobs.cli", "embed", "-q"]
    for key in ("source.table", "target.table", "model.uri", "embed.max_tokens", "embed.overlap_tokens",
                "mlflow.tracking_uri", "mlflow.registry_uri", "mlflow.artifact_location"):
        section, name = key.split(".")
        args += ["--set", f"{key}={getattr(getattr(settings, section), name)}"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "documents embedded   7" in done.stdout and "errors 3" in done.stdout
    assert "target rows deleted  0" in done.stdout
    assert settings.target.table in done.stdout and "DeltaTable(" in done.stdout
    # The JVM itself announces the incubator module Spark loads; nothing else may reach stderr.
    noise = [line for line in done.stderr.splitlines() if line.strip() and "incubator modules" not in line]
    assert noise == []
    assert table_columns(None, settings.target.table) == EMBED_COLUMNS


def test_demo_builds_the_sample_table_then_embeds_nothing_new(spark, make_settings, monkeypatch, capsys):
    """Only the demo makes up data: the sample table appears where source.table points, once."""
    from mlabatch.jobs.demo import run_demo

    sample = pa.table({"id": ["one", "two"], "title": ["a", "b"], "text": ["A first document.", "A second one."]})
    monkeypatch.setattr("mlabatch.jobs.demo.sample_documents", lambda: sample)
    settings = make_settings()
    text = run_demo(settings)
    assert DeltaTable(settings.source.table).to_pyarrow_table().num_rows == 2
    assert "documents embedded   2" in text
    assert "nothing new or changed to embed" in run_demo(settings)


def test_an_unresolvable_model_exits_1_naming_the_setting(make_settings, documents, write_source, capsys):
    settings = make_settings()
    write_source(settings.source.table, documents())
    assert main(["embed", "--set", f"source.table={settings.source.table}",
                 "--set", f"target.table={settings.target.table}", "--set", "model.uri=models:/missing@x",
                 "--set", f"mlflow.tracking_uri={settings.mlflow.tracking_uri}",
                 "--set", f"mlflow.registry_uri={settings.mlflow.registry_uri}"]) == 1
    err = capsys.readouterr().err
    assert "does not resolve" in err and "model.uri" in err
