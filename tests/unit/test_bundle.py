"""bundle.yml and resources/*.yml: typed validation, cross-references, and task arguments the CLI accepts."""
import glob
import re
from pathlib import Path

import pytest
import yaml
from databricks.bundles.jobs import Job
from databricks.bundles.volumes import Volume

from mlabatch.jobs.cli import _parser
from mlabatch.jobs.config import load_settings
from mlabatch.jobs.run import job_name

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_COMMANDS = {"demo", "embed", "convert", "generate"}


def load_bundle() -> dict:
    """bundle.yml with its included resource files merged in, as the Databricks CLI does."""
    bundle = yaml.safe_load((ROOT / "bundle.yml").read_text())
    bundle["resources"] = {}
    for pattern in bundle["include"]:
        for path in sorted(glob.glob(str(ROOT / pattern))):
            for kind, items in yaml.safe_load(Path(path).read_text())["resources"].items():
                bundle["resources"].setdefault(kind, {}).update(items)
    return bundle


def resolve(value, variables: dict, job_params: dict):
    """Replace ${var.x}, ${bundle.target} and {{job.parameters.x}} / {{job.run_id}} with defaults."""
    if isinstance(value, str):
        value = re.sub(r"\$\{var\.(\w+)\}", lambda m: str(variables[m.group(1)]), value)
        value = re.sub(r"\{\{job\.parameters\.(\w+)\}\}", lambda m: str(resolve(job_params[m.group(1)], variables, {})), value)
        return value.replace("{{job.run_id}}", "12345")
    return value


@pytest.fixture(scope="module")
def bundle():
    return load_bundle()


def test_every_resource_validates_against_the_typed_classes(bundle):
    assert set(bundle["resources"]["jobs"]) == {"convert_model", "embed_documents", "generate_text"}
    for spec in bundle["resources"]["jobs"].values():
        Job.from_dict(spec)  # unknown or misspelled fields raise
    for spec in bundle["resources"]["volumes"].values():
        Volume.from_dict(spec)


def test_a_typo_is_caught(bundle):
    spec = dict(bundle["resources"]["jobs"]["embed_documents"], email_notification={})
    with pytest.raises(ValueError, match="email_notification"):
        Job.from_dict(spec)


def test_variables_and_cluster_keys_resolve(bundle):
    text = (ROOT / "bundle.yml").read_text() + "".join(p.read_text() for p in (ROOT / "resources").glob("*.yml"))
    for name in re.findall(r"\$\{var\.(\w+)\}", text):
        assert name in bundle["variables"], f"${{var.{name}}} is not declared"
    for key, spec in bundle["resources"]["jobs"].items():
        clusters = {c["job_cluster_key"] for c in spec["job_clusters"]}
        params = {p["name"] for p in spec.get("parameters", [])}
        for task in spec["tasks"]:
            assert task["job_cluster_key"] in clusters, f"{key}.{task['task_key']}"
            assert task["libraries"] == [{"whl": "../dist/*.whl"}]  # the artifact build writes dist/
            for dep in task.get("depends_on", []):
                assert dep["task_key"] in {t["task_key"] for t in spec["tasks"]}
            for ref in re.findall(r"\{\{job\.parameters\.(\w+)\}\}", " ".join(task["python_wheel_task"]["parameters"])):
                assert ref in params, f"{key}: unknown job parameter {ref}"


def test_gpu_clusters_and_schedules(bundle):
    variables = {k: v["default"] for k, v in bundle["variables"].items() if "default" in v}
    assert variables["node_type"] == "p5.48xlarge"
    for key, spec in bundle["resources"]["jobs"].items():
        cluster = spec["job_clusters"][0]["new_cluster"]
        assert cluster["spark_version"].startswith("17.3.x-gpu-ml")
        assert cluster["data_security_mode"] == "SINGLE_USER"
        share = float(resolve(cluster["spark_conf"]["spark.task.resource.gpu.amount"], variables, {}))
        assert share <= 0.5 and round(1 / share) == 24  # p5.48xlarge: 192 vCPUs over 8 GPUs; Spark takes <= 0.5
        assert cluster["spark_env_vars"]["MLABATCH_KERNELS_CACHE"].startswith("/Volumes/")
        assert spec["name"] == job_name(key)  # `mlabatch run <key>` finds it
        scheduled = "schedule" in spec
        assert scheduled == (key != "convert_model")
        if scheduled:
            assert spec["schedule"]["pause_status"] == "${var.schedule_pause_status}"
    assert bundle["variables"]["schedule_pause_status"]["default"] == "PAUSED"
    assert bundle["variables"]["node_type"]["default"] == "p5.48xlarge"
    assert bundle["targets"]["dev"] == {"mode": "development", "default": True}
    prod = bundle["targets"]["prod"]
    assert prod["mode"] == "production" and "service_principal_name" in prod["run_as"]
    assert prod["variables"]["schedule_pause_status"] == "UNPAUSED" and prod["permissions"]


@pytest.mark.parametrize("target", ["dev", "prod"])
def test_task_arguments_parse_and_validate_as_settings(bundle, target):
    variables = {k: v["default"] for k, v in bundle["variables"].items()}
    variables.update(bundle["targets"][target].get("variables", {}))
    for key, spec in bundle["resources"]["jobs"].items():
        defaults = {p["name"]: p["default"] for p in spec.get("parameters", [])}
        for task in spec["tasks"]:
            wheel = task["python_wheel_task"]
            assert wheel["package_name"] == "mlabatch" and wheel["entry_point"] == "mlabatch"
            argv = [resolve(a, variables, defaults).replace("${bundle.target}", target) for a in wheel["parameters"]]
            args = _parser().parse_args(argv)  # exits on an unknown command or option
            if args.command in SETTINGS_COMMANDS:
                load_settings(args.conf, args.overrides)  # every --set names a real, valid setting
