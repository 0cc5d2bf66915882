"""`mlabatch run JOB --target dev`: start a deployed bundle job, follow it to the end, report the result.

Uses databricks-sdk with the standard authentication (DATABRICKS_HOST/DATABRICKS_TOKEN, a profile in
~/.databrickscfg, or any unified auth method). Jobs are found by the names resources/jobs.yml gives
them ("mlabatch-" + the job key with dashes); in development mode the bundle prefixes them with
"[dev <user>] ".
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable

TERMINAL = {"TERMINATED", "SKIPPED", "INTERNAL_ERROR"}


class RunError(RuntimeError):
    """The job could not be started or did not succeed; the message says why and where to look."""


@dataclass
class RunResult:
    """How a finished run ended, and where to see it."""

    run_id: int
    url: str
    result_state: str
    message: str


def job_name(job: str) -> str:
    """The deployed name of a bundle job key (embed_documents -> mlabatch-embed-documents)."""
    return job if job.startswith("mlabatch-") else "mlabatch-" + job.replace("_", "-")


def find_job(client, job: str, target: str) -> int:
    """The job id of JOB as deployed to TARGET; a clear error lists what is deployed otherwise."""
    name = job_name(job)
    ours = [j for j in client.jobs.list() if j.settings and "mlabatch-" in (j.settings.name or "")]
    if target == "dev":
        # The bundle's development prefix: "[dev <user name before @, non-alphanumerics as _>] ".
        short = re.sub(r"[^A-Za-z0-9]", "_", client.current_user.me().user_name.split("@")[0])
        matches = [j for j in ours if j.settings.name == f"[dev {short}] {name}"]
    else:
        matches = [j for j in ours if j.settings.name == name]
    if len(matches) == 1:
        return matches[0].job_id
    deployed = sorted(j.settings.name for j in ours) or ["none"]
    if not matches:
        raise RunError(f"no job {name!r} deployed for target {target}; deployed mlabatch jobs: "
                       f"{', '.join(deployed)}. Run `databricks bundle deploy -t {target}` first")
    raise RunError(f"several jobs match {name!r} for target {target}: {', '.join(deployed)}")


def run_job(client, job: str, target: str, params: dict[str, str], timeout_s: float = 4 * 3600,
            poll_s: float = 15.0, echo: Callable[[str], None] = print) -> RunResult:
    """Start the job with `params` as job parameters and poll until it ends, echoing state changes."""
    job_id = find_job(client, job, target)
    run_id = client.jobs.run_now(job_id=job_id, job_parameters=params or None).run_id
    started = time.monotonic()
    seen = ""
    while True:
        run = client.jobs.get_run(run_id)
        state = run.state
        life = state.life_cycle_state.value if state and state.life_cycle_state else "PENDING"
        tasks = ", ".join(f"{t.task_key}: {t.state.life_cycle_state.value}" for t in run.tasks or []
                          if t.state and t.state.life_cycle_state)
        line = f"{life}" + (f" ({tasks})" if tasks else "")
        if line != seen:
            echo(f"run {run_id}: {line}")
            seen = line
        if life in TERMINAL:
            result = state.result_state.value if state.result_state else life
            outcome = RunResult(run_id, run.run_page_url, result, state.state_message or "")
            if result != "SUCCESS":
                raise RunError(f"run {run_id} ended {result}: {outcome.message or 'see the run page'} "
                               f"({outcome.url})")
            return outcome
        if time.monotonic() - started > timeout_s:
            raise RunError(f"run {run_id} still {life} after {timeout_s:.0f} s; it keeps running: {run.run_page_url}")
        time.sleep(poll_s)


def workspace_client(profile: str | None):
    """A WorkspaceClient from the standard Databricks auth; a clear error when none is configured."""
    from databricks.sdk import WorkspaceClient

    try:
        return WorkspaceClient(profile=profile)
    except ValueError as err:
        raise RunError(
            "no Databricks authentication found: set DATABRICKS_HOST and DATABRICKS_TOKEN, "
            f"or pass --profile NAME from ~/.databrickscfg ({err})") from None
