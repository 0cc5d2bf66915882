"""`mlabatch run` against specced fakes of databricks-sdk's services: calls must match real signatures."""
from types import SimpleNamespace
from unittest.mock import create_autospec

import pytest
from databricks.sdk.mixins.jobs import JobsExt
from databricks.sdk.service.iam import CurrentUserAPI, User
from databricks.sdk.service.jobs import (BaseJob, JobSettings, Run, RunLifeCycleState, RunResultState, RunState,
                                         RunTask)

from mlabatch.jobs import run as run_module
from mlabatch.jobs.cli import main
from mlabatch.jobs.run import RunError, run_job

DEPLOYED = [
    BaseJob(job_id=1, settings=JobSettings(name="mlabatch-embed-documents")),
    BaseJob(job_id=2, settings=JobSettings(name="[dev ada_lovelace] mlabatch-embed-documents")),
    BaseJob(job_id=3, settings=JobSettings(name="[dev someone_else] mlabatch-embed-documents")),
    BaseJob(job_id=4, settings=JobSettings(name="mlabatch-generate-text")),
]


def state(life: RunLifeCycleState, result: RunResultState | None = None, message: str = "") -> Run:
    return Run(run_id=77, run_page_url="https://example/run/77", state=RunState(
        life_cycle_state=life, result_state=result, state_message=message),
        tasks=[RunTask(task_key="embed", state=RunState(life_cycle_state=life))])


def fake_client(*runs: Run):
    jobs = create_autospec(JobsExt, instance=True)
    jobs.list.return_value = iter(DEPLOYED)
    jobs.run_now.return_value = SimpleNamespace(run_id=77)
    jobs.get_run.side_effect = list(runs)
    me = create_autospec(CurrentUserAPI, instance=True)
    me.me.return_value = User(user_name="ada.lovelace@example.com")
    return SimpleNamespace(jobs=jobs, current_user=me)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(run_module.time, "sleep", lambda s: None)


def test_success_follows_states_and_targets_the_users_dev_job():
    client = fake_client(state(RunLifeCycleState.PENDING), state(RunLifeCycleState.RUNNING),
                         state(RunLifeCycleState.TERMINATED, RunResultState.SUCCESS))
    lines = []
    result = run_job(client, "embed_documents", "dev", {"source_table": "main.docs.pages"}, echo=lines.append)
    client.jobs.run_now.assert_called_once_with(job_id=2, job_parameters={"source_table": "main.docs.pages"})
    assert (result.run_id, result.result_state, result.url) == (77, "SUCCESS", "https://example/run/77")
    assert lines == ["run 77: PENDING (embed: PENDING)", "run 77: RUNNING (embed: RUNNING)",
                     "run 77: TERMINATED (embed: TERMINATED)"]


def test_prod_uses_the_unprefixed_job():
    client = fake_client(state(RunLifeCycleState.TERMINATED, RunResultState.SUCCESS))
    run_job(client, "embed_documents", "prod", {}, echo=lambda s: None)
    client.jobs.run_now.assert_called_once_with(job_id=1, job_parameters=None)


def test_failed_run_raises_with_message_and_url():
    client = fake_client(state(RunLifeCycleState.TERMINATED, RunResultState.FAILED, "Task embed failed: OOM"))
    with pytest.raises(RunError, match=r"ended FAILED: Task embed failed: OOM \(https://example/run/77\)"):
        run_job(client, "embed_documents", "dev", {}, echo=lambda s: None)


def test_timeout_says_the_run_goes_on(monkeypatch):
    client = fake_client(*[state(RunLifeCycleState.RUNNING)] * 3)
    clock = iter([0.0, 5.0, 11.0])
    monkeypatch.setattr(run_module.time, "monotonic", lambda: next(clock))
    with pytest.raises(RunError, match="still RUNNING after 10 s; it keeps running: https://example/run/77"):
        run_job(client, "embed_documents", "dev", {}, timeout_s=10, echo=lambda s: None)


def test_unknown_job_lists_what_is_deployed():
    client = fake_client()
    with pytest.raises(RunError, match="no job 'mlabatch-convert-model'.*mlabatch-embed-documents.*bundle deploy"):
        run_job(client, "convert_model", "dev", {}, echo=lambda s: None)
    client.jobs.run_now.assert_not_called()


def test_cli_reports_missing_auth_and_bad_params(monkeypatch, capsys):
    def no_auth(profile):
        raise RunError("no Databricks authentication found: set DATABRICKS_HOST and DATABRICKS_TOKEN")

    monkeypatch.setattr(run_module, "workspace_client", no_auth)
    assert main(["run", "embed_documents"]) == 1
    assert "DATABRICKS_HOST" in capsys.readouterr().err
    assert main(["run", "embed_documents", "--param", "oops"]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err


def test_real_client_without_any_auth_fails_clearly(monkeypatch, tmp_path):
    for var in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_PROFILE", "DATABRICKS_CLIENT_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.databrickscfg
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "none.cfg"))
    with pytest.raises(RunError, match="no Databricks authentication"):
        run_module.workspace_client(None)
