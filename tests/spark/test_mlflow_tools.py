"""Registered models in MLflow's own tools: `mlflow.pyfunc.spark_udf` on local Spark and `mlflow models serve`.

Both must give what embed_udf / generate_udf give: the same columns (EMBED_RESULT_TYPE,
GENERATE_RESULT_TYPE) and an error row, never a vector or a text, for an empty or null input.

One difference is MLflow's, documented in the README: spark_udf casts every string field of a struct
result with `astype(str)`, so a null string in a batch that also has values arrives as the text "None"
(the README's `nullif(..., 'None')` undoes it). The tests pin that, so an MLflow fix shows up here.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
import pytest

from mlabatch.jobs.config import load_settings
from mlabatch.models.registry.register import register_model
from mlabatch.models.rows import EMBED_RESULT_TYPE, GENERATE_RESULT_TYPE
from mlabatch.pipelines.tracking import configure_mlflow

SERVE_START_S = 90  # how long `mlflow models serve` may take to answer /ping


@pytest.fixture()
def store(tmp_path) -> str:
    """A fresh sqlite tracking and registry store, set as this process's MLflow store."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    configure_mlflow(load_settings([], [f"mlflow.tracking_uri={uri}", f"mlflow.registry_uri={uri}",
                                        f"mlflow.artifact_location={tmp_path}/artifacts"]).mlflow)
    return uri


def test_spark_udf_embeds_with_the_udf_columns(spark, store, minilm_dir, embedder):
    register_model(minilm_dir, "tools-minilm", "champion")
    embed = mlflow.pyfunc.spark_udf(spark, "models:/tools-minilm@champion", result_type=EMBED_RESULT_TYPE,
                                    env_manager="local")
    df = spark.createDataFrame([("a", "Delta tables of documents"), ("b", ""), ("c", None), ("d", " \u200b ")],
                               "id string, text string").coalesce(1)  # one batch: good and bad rows mixed
    rows = {r["id"]: r for r in df.withColumn("e", embed("text")).select("id", "e.*").collect()}
    assert rows["a"]["error"] == "None"  # MLflow's cast of a null string (module docstring)
    rows = {r["id"]: r for r in df.withColumn("e", embed("text")).selectExpr(
        "id", "e.embedding", "e.token_count", "e.truncated", "nullif(e.error, 'None') AS error").collect()}
    np.testing.assert_allclose(rows["a"]["embedding"], embedder.embed(["Delta tables of documents"])[0], atol=1e-5)
    assert rows["a"]["token_count"] == 6 and rows["a"]["truncated"] is False and rows["a"]["error"] is None
    assert rows["b"]["embedding"] is None and rows["b"]["error"] == "text is empty or whitespace"
    assert rows["c"]["embedding"] is None and rows["c"]["error"] == "text is null"
    assert rows["d"]["embedding"] is None and rows["d"]["token_count"] == 0


def test_spark_udf_generates_with_the_udf_columns(spark, store, tiny_decoder_dir):
    register_model(tiny_decoder_dir, "tools-tiny-mla", "champion")
    generate = mlflow.pyfunc.spark_udf(spark, "models:/tools-tiny-mla@champion",
                                       result_type=GENERATE_RESULT_TYPE, env_manager="local",
                                       params={"max_new_tokens": 5})
    df = spark.createDataFrame([("a", "Once upon a time"), ("b", ""), ("c", None)], "id string, prompt string")
    generated = df.coalesce(1).withColumn("g", generate("prompt"))
    assert {r["text"] for r in generated.select("g.text").collect()} >= {"None"}  # MLflow's cast (docstring)
    rows = {r["id"]: r for r in generated.selectExpr(
        "id", "nullif(g.text, 'None') AS text", "g.prompt_tokens", "g.generated_tokens",
        "nullif(g.finish_reason, 'None') AS finish_reason", "g.truncated", "nullif(g.error, 'None') AS error"
    ).collect()}
    assert rows["a"]["text"] and 0 < rows["a"]["generated_tokens"] <= 5 and rows["a"]["prompt_tokens"] > 0
    assert rows["a"]["finish_reason"] in {"length", "stop"} and rows["a"]["error"] is None
    assert rows["b"]["text"] is None and rows["b"]["error"] == "prompt is empty or whitespace"
    assert rows["c"]["text"] is None and rows["c"]["error"] == "prompt is null"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


@contextlib.contextmanager
def served(model_uri: str, store: str, log: Path) -> Iterator[str]:
    """`mlflow models serve` for `model_uri` on 127.0.0.1, as a new user runs it; yields its base URL.

    The venv's bin/ goes on PATH (the server shells out to uvicorn). Waits at most SERVE_START_S for
    /ping, and always stops the server's whole process group at the end.
    """
    port = _free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": store, "MLFLOW_REGISTRY_URI": store}
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
                                   "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"],
                                  env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_START_S
        while True:
            assert server.poll() is None, f"mlflow models serve exited: {log.read_text()[-3000:]}"
            with contextlib.suppress(urllib.error.URLError, ConnectionError):
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            assert time.monotonic() < deadline, f"no /ping in {SERVE_START_S} s: {log.read_text()[-3000:]}"
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_served_embedder_answers_with_error_rows(store, tmp_path, minilm_dir, embedder):
    register_model(minilm_dir, "served-minilm", "champion")
    with served("models:/served-minilm@champion", store, tmp_path / "serve.log") as url:
        body = {"dataframe_split": {"columns": ["text"], "data": [["hello world"], [""], [None]]}}
        good, empty, null = _post(f"{url}/invocations", body)["predictions"]
    np.testing.assert_allclose(good["embedding"], embedder.embed(["hello world"])[0], atol=1e-5)
    assert good["token_count"] > 0 and good["error"] is None
    assert empty["embedding"] is None and empty["error"] == "text is empty or whitespace"
    assert null["embedding"] is None and null["error"] == "text is null"


def test_served_decoder_generates_with_params(store, tmp_path, tiny_decoder_dir):
    register_model(tiny_decoder_dir, "served-tiny-mla", "champion")
    with served("models:/served-tiny-mla@champion", store, tmp_path / "serve.log") as url:
        body = {"dataframe_split": {"columns": ["prompt"], "data": [["Once upon a time"], [None]]},
                "params": {"max_new_tokens": 4, "temperature": 0.7, "seed": 1, "stop": ["zzz"]}}
        good, null = _post(f"{url}/invocations", body)["predictions"]
    assert good["text"] and 0 < good["generated_tokens"] <= 4 and good["error"] is None
    assert null["text"] is None and null["error"] == "prompt is null"
