"""Driver-side checks, with real local Spark, Delta and MLflow: every problem stops `mlabatch embed` or
`mlabatch generate` in seconds, before any Spark job, naming the setting to fix; nothing is written.

The first case is the data-loss bug of issue 13: a mistyped source.table used to become a sample table,
and the stale-row removal then deleted every real row of the target.
"""
import json
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from mlabatch.jobs.cli import main
from mlabatch.jobs.config import load_settings
from mlabatch.jobs.embed import run_embed
from mlabatch.jobs.generate import run_generate, summary as generate_summary
from mlabatch.models.mla_config import MLAModelConfig
from mlabatch.pipelines.checks import EMBED_COLUMNS, GENERATE_COLUMNS
from mlabatch.pipelines.tables import table_columns

TEXTS = {"a": "Delta tables keep a transaction log.", "b": "Spark runs pandas UDFs on Arrow batches.", "c": None}


def _write(path: Path, columns: dict[str, list]) -> None:
    write_deltalake(str(path), pa.table(columns), mode="overwrite")


def _snapshot(root: Path) -> dict[str, tuple[int, list[str]]]:
    """Each Delta table under root: (version, its files), to show nothing was written."""
    return {p.parent.name: (DeltaTable(str(p.parent)).version(), sorted(f.name for f in p.parent.rglob("*")))
            for p in root.glob("*/_delta_log")}


@pytest.fixture(scope="module")
def workdir(spark, tmp_path_factory, minilm_dir):
    """A source, the target a real embed run made from it, a prompts table, and the CLI settings for them."""
    root = tmp_path_factory.mktemp("preflight")
    _write(root / "source", {"id": list(TEXTS), "text": list(TEXTS.values())})
    _write(root / "prompts", {"id": ["p"], "prompt": ["Once upon a time"]})
    args = [f"source.table={root}/source", f"target.table={root}/target", f"model.uri={minilm_dir}",
            f"generate.source_table={root}/prompts", f"generate.target_table={root}/generations",
            "embed.max_tokens=64", "embed.overlap_tokens=8",
            f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db", f"mlflow.registry_uri=sqlite:///{root}/mlflow.db",
            f"mlflow.artifact_location={root}/artifacts"]
    run_embed(load_settings([], args))
    return root, [item for arg in args for item in ("--set", arg)]


def test_the_target_has_the_columns_the_checks_expect(workdir):
    root, _ = workdir
    assert table_columns(None, str(root / "target")) == EMBED_COLUMNS


def test_a_mistyped_source_stops_and_leaves_the_target_as_it_was(workdir, capsys):
    root, args = workdir
    before = _snapshot(root)
    assert main(["embed", "-q", *args, "--set", f"source.table={root}/sourc"]) == 1
    err = capsys.readouterr().err
    assert f"source.table={root}/sourc does not exist" in err and "mlabatch demo" in err
    assert _snapshot(root) == before  # the target's Delta version and files are as they were
    assert not (root / "sourc").exists()


def _models(root: Path, minilm_dir: Path, tiny_decoder_dir: Path) -> dict[str, Path]:
    """Model directories of each kind: only their config files matter before any work."""
    dirs = {"mla_decoder": tiny_decoder_dir, "encoder": minilm_dir}
    mistral_window = {"model_type": "mistral", "sliding_window": 4096, "max_position_embeddings": 32768}
    for name, config in {"llama": {"model_type": "llama"}, "gpt2": {"model_type": "gpt2"}, "mpnet": {"model_type": "mpnet"},
                         "mistral_window": mistral_window}.items():
        dirs[name] = root / "models" / name
        dirs[name].mkdir(parents=True, exist_ok=True)
        (dirs[name] / "config.json").write_text(json.dumps(config))
        shutil.copy(minilm_dir / "tokenizer.json", dirs[name])
    encoder = dirs["mla_encoder"] = root / "models" / "minilm-mla"
    shutil.copytree(minilm_dir, encoder, dirs_exist_ok=True)
    MLAModelConfig(architecture="bert", kind="encoder", d_c=192, d_rope=0, n_heads=12, n_kv_heads=12, head_dim=32,
                   has_nope=True, kv_values_per_token_before=768, kv_values_per_token_after=192,
                   conversion={}).write(encoder)
    return dirs


CASES = [  # (command and arguments, with {root} and {model kind} filled in; exit code; words of the error)
    (["embed", "--set", "model.uri={mla_decoder}"], 1, ["model.uri=", "decoder", "mlabatch generate"]),
    (["embed", "--set", "model.uri={llama}"], 1, ["model.uri=", "'llama'", "bert"]),
    (["embed", "--set", "model.uri=models:/missing@champion"], 1, ["model.uri", "models:/missing@champion"]),
    (["embed", "--set", "target.table={root}/source/"], 2, ["source.table and target.table", "same table"]),
    (["embed", "--set", "target.table={root}/./source"], 2, ["same table"]),
    (["embed", "--set", "target.table={root}/prompts"], 1, ["target.table={root}/prompts", "no column chunk",
                                                            "new target.table", "drop"]),
    (["embed", "--set", "target.table=main.docs"], 2, ["target.table=main.docs", "needs Databricks", "path"]),
    (["embed", "--set", "mlflow.tracking_uri=databricks"], 1, ["mlflow.tracking_uri=databricks",
                                                                "DATABRICKS_HOST"]),
    (["embed", "--set", "mlflow.tracking_uri=http://127.0.0.1:9"], 1, ["mlflow.tracking_uri=http://127.0.0.1:9",
                                                                        "unreachable", "sqlite"]),
    (["generate", "--set", "generate.model_uri={encoder}"], 1, ["generate.model_uri=", "'bert'", "mlabatch convert"]),
    (["generate", "--set", "generate.model_uri={mla_encoder}"], 1, ["generate.model_uri=", "encoder",
                                                                     "mlabatch convert"]),
    (["generate", "--set", "generate.model_uri={llama}"], 1, ["generate.model_uri=", "cannot be served unconverted",
                                                             "has no weights", "mlabatch convert --set convert.source="]),
    (["generate", "--set", "generate.model_uri={mistral_window}"], 1, ["generate.model_uri=", "sliding_window=4096",
                                                                      "Mistral v0.2", "mlabatch convert"]),
    (["embed", "--set", "model.uri={mpnet}"], 1, ["model.uri=", "'mpnet'", "relative-position bias", "XLM-R"]),
    (["generate", "--set", "generate.model_uri={gpt2}"], 1, ["generate.model_uri=", "'gpt2'", "llama"]),
    (["generate", "--set", "generate.model_uri={mla_decoder}", "--set", "generate.source_table={root}/prompt"],
     1, ["generate.source_table={root}/prompt does not exist"]),
    (["generate", "--set", "generate.model_uri={mla_decoder}", "--set", "generate.target_table={root}/target"],
     1, ["generate.target_table={root}/target", "no column prompt_hash", "other columns chunk"]),
    (["generate", "--set", "generate.model_uri={mla_decoder}", "--set", "generate.target_table=main.s.gens"],
     2, ["generate.target_table=main.s.gens", "needs Databricks"]),
]


@pytest.mark.parametrize("command, code, words", CASES, ids=[" ".join(c[0][2:]) for c in CASES])
def test_each_check_fails_in_seconds_naming_the_key_and_writes_nothing(
        spark, workdir, minilm_dir, tiny_decoder_dir, capsys, command, code, words):
    root, args = workdir
    fill = {"root": root, **_models(root, minilm_dir, tiny_decoder_dir)}
    command = [part.format(**fill) for part in command]
    before, jobs = _snapshot(root), set(spark.sparkContext.statusTracker().getJobIdsForGroup())
    started = time.perf_counter()
    assert main([command[0], "-q", *args, *command[1:]]) == code
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    for word in words:
        assert word.format(**fill) in err
    assert "Traceback" not in err
    assert seconds < 30, f"took {seconds:.0f} s"
    assert set(spark.sparkContext.statusTracker().getJobIdsForGroup()) == jobs  # no Spark job ran
    assert _snapshot(root) == before


def test_the_databricks_conf_locally_names_the_table_setting(capsys):
    assert main(["embed", "-q", "--conf", "dev"]) == 2
    err = capsys.readouterr().err
    assert "source.table=main.mlabatch_dev.documents" in err and "needs Databricks" in err


def test_generate_columns_and_summary_of_nothing_new_and_of_deletions(spark, workdir, tiny_decoder_dir):
    root, args = workdir
    overrides = [a for a in args if a != "--set"] + [f"generate.model_uri={tiny_decoder_dir}",
                                                     "generate.max_new_tokens=4", "generate.num_blocks=16",
                                                     "generate.max_delete_fraction=1.0"]
    settings = load_settings([], overrides)

    def run() -> str:
        stats, run_id = run_generate(settings)
        return generate_summary(stats, settings, run_id)

    _write(root / "prompts", {"id": ["p", "q"], "prompt": ["Once upon a time", "The answer is"]})
    text = run()
    assert "finished in" in text and "prompts generated    2" in text
    assert table_columns(None, settings.generate.target_table) == GENERATE_COLUMNS

    text = run()
    assert "nothing new or changed to generate" in text and "s of generation" not in text
    assert "target rows deleted  0" in text

    _write(root / "prompts", {"id": ["p"], "prompt": ["Once upon a time"]})
    text = run()
    assert "nothing new or changed to generate" in text and "target rows deleted  1" in text
