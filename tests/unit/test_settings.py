"""Settings: defaults, overlays, overrides, and errors that name the key and the fix."""
from pathlib import Path

import pytest

from mlabatch.jobs.config import SettingsError, load_settings


def test_local_defaults_are_valid():
    settings = load_settings()
    assert settings.source.table == "data/tables/documents"
    assert settings.model.uri == "models:/mlabatch-minilm@champion"
    assert settings.embed.max_tokens == 256


def test_overlay_and_override_order():
    settings = load_settings(["dev"], ["embed.token_budget=2048", "target.table=main.s.other"])
    assert settings.source.table == "main.mlabatch_dev.documents"  # from dev.yml
    assert settings.embed.token_budget == 2048
    assert settings.target.table == "main.s.other"


def test_yaml_file_overlay(tmp_path):
    conf = tmp_path / "mine.yml"
    conf.write_text("source:\n  table: /data/docs\n  text_column: body\n")
    settings = load_settings([str(conf)])
    assert (settings.source.table, settings.source.text_column) == ("/data/docs", "body")


@pytest.mark.parametrize("override, words", [
    ("embed.token_budgt=3", ["embed.token_budgt", "unknown key", "token_budget"]),
    ("embed.token_budget=many", ["embed.token_budget", "integer"]),
    ("embed.token_budget=8", ["embed.token_budget", "greater than or equal to 64"]),
    ("embed.device=tpu", ["embed.device", "auto"]),
    ("source.table=my table!", ["source.table", "catalog.schema.table"]),
    ("source.text_column=te xt", ["source.text_column", "column name"]),
    ("target.table=data/tables/documents", ["same table"]),
    ("embed.overlap_tokens=200", ["overlap_tokens", "half"]),
    ("nonsense=1", ["section.key=value"]),
    ("sourcee.table=x/y", ["sourcee", "unknown key"]),
])
def test_bad_settings_name_key_and_fix(override, words):
    with pytest.raises(SettingsError) as err:
        load_settings([], [override])
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("source, target", [
    ("data/tables/documents", "data/tables/documents/"),
    ("data/tables/documents", "./data/tables/documents"),
    ("data/tables/documents", "data/other/../tables/documents"),
    ("data/tables/documents", str(Path("data/tables/documents").resolve())),
    ("main.docs.pages", "MAIN.docs.Pages"),
])
def test_one_table_spelled_two_ways_is_the_same_table(source, target):
    with pytest.raises(SettingsError, match="source.table and target.table are the same table"):
        load_settings([], [f"source.table={source}", f"target.table={target}"])
    with pytest.raises(SettingsError, match="generate.source_table and generate.target_table are the same table"):
        load_settings([], [f"generate.source_table={source}", f"generate.target_table={target}"])


def test_a_same_table_error_names_the_keys_without_echoing_every_setting():
    with pytest.raises(SettingsError) as err:
        load_settings([], ["target.table=data/tables/documents/"])
    assert "same table" in str(err.value) and "max_tokens" not in str(err.value)


def test_unknown_conf_name_lists_choices():
    with pytest.raises(SettingsError, match=r"dev.*prod|prod.*dev"):
        load_settings(["staging"])


def test_missing_conf_file(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings([str(tmp_path / "nope.yml")])


def test_convert_section_is_validated():
    assert load_settings([], ["convert.d_c=256", "convert.d_rope=64"]).convert.d_c == 256
    with pytest.raises(SettingsError, match="convert.method"):
        load_settings([], ["convert.method=magic"])
    with pytest.raises(SettingsError, match="convert.d_c"):
        load_settings([], ["convert.d_c=0"])
