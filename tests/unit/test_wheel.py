"""The wheel the bundle deploys holds what workers need: every subpackage, the conf files, kernel sources."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contents(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, env={"MLABATCH_BUILD_CUDA": "0", "PATH": "/usr/bin:/bin",
                                                                       "HOME": str(tmp_path)})
    (wheel,) = tmp_path.glob("mlabatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("conf", "kernels", "models", "udfs", "pipelines", "jobs"):
        assert f"mlabatch/{package}/__init__.py" in names
    assert {"mlabatch/conf/local.yml", "mlabatch/conf/dev.yml", "mlabatch/conf/prod.yml"} <= names
    assert {"mlabatch/models/registry/pyfunc_embedder.py", "mlabatch/models/registry/pyfunc_generator.py"} <= names
    sources = {p.name for p in (ROOT / "kernels" / "csrc").iterdir()}
    assert {f"mlabatch/kernels/csrc/{s}" for s in sources} <= names  # the JIT build on workers needs them all
    assert not any(n.startswith(("tests/", "benchmarks/", "kernels/", "mlabatch/tests")) for n in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "mlabatch = mlabatch.jobs.cli:main" in entry_points
