"""bundle.yml parses into databricks-bundles' typed classes and its references hold."""
import tomllib
from pathlib import Path

import yaml
from databricks.bundles.jobs import Job

ROOT = Path(__file__).resolve().parents[2]


def test_jobs_validate_and_reference_what_exists():
    bundle = yaml.safe_load((ROOT / "bundle.yml").read_text())
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    targets = set(bundle["targets"])
    for key, spec in bundle["resources"]["jobs"].items():
        job = Job.from_dict(spec)  # unknown or misspelled fields raise
        clusters = {c.job_cluster_key for c in job.job_clusters}
        for task in job.tasks:
            assert task.job_cluster_key in clusters, f"{key}.{task.task_key}: unknown job_cluster_key"
            wheel = task.python_wheel_task
            assert wheel.package_name == "mlabatch" and wheel.entry_point in scripts
    assert targets <= {"dev", "prod"}  # each target name is also a packaged conf overlay
    for spec in bundle["resources"]["jobs"].values():
        for task in spec["tasks"]:
            params = task["python_wheel_task"]["parameters"]
            assert params[params.index("--conf") + 1] == "${bundle.target}"
    for ref in ("${var.node_type}", "${var.num_workers}"):
        assert ref[6:-1] in bundle["variables"]
