"""The `mlabatch` command line: help a newcomer can follow, errors with exit codes, a real embed run."""
import pytest
from deltalake import DeltaTable

from mlabatch.jobs.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for word in ("demo", "embed", "models", "mlabatch demo", "--set"):
        assert word in out


def test_bad_setting_exits_2_naming_the_key(capsys):
    assert main(["embed", "--set", "embed.batch_sise=4"]) == 2
    err = capsys.readouterr().err
    assert "embed.batch_sise" in err and "unknown key" in err


def test_embed_command_writes_delta_and_prints_summary(spark, make_settings, tmp_path, minilm_dir, capsys,
                                                       documents, write_source):
    settings = make_settings()
    write_source(settings.source.table, documents())
    args = ["embed", "-q",
            "--set", f"source.table={settings.source.table}", "--set", f"target.table={settings.target.table}",
            "--set", f"model.uri={minilm_dir}", "--set", "source.build_sample_if_missing=false",
            "--set", f"mlflow.tracking_uri={settings.mlflow.tracking_uri}",
            "--set", f"mlflow.registry_uri={settings.mlflow.registry_uri}",
            "--set", f"mlflow.artifact_location={settings.mlflow.artifact_location}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "documents embedded   7" in out and "errors 3" in out
    assert settings.target.table in out and "DeltaTable(" in out
    assert DeltaTable(settings.target.table).to_pyarrow_table().num_rows > 7

    assert main(args[:-2] + ["--set", "model.uri=models:/missing@x"]) == 1
    assert "does not resolve" in capsys.readouterr().err
