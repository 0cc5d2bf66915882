"""benchmarks/kernel_variants.py: every variant's source edits still apply to kernels/ as it is (they are found on
the GPU machine otherwise), and each copy gets its own extension module name and C++ namespace."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kernel_variants", ROOT / "benchmarks" / "kernel_variants.py")
kernel_variants = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kernel_variants)


@pytest.mark.parametrize("name", sorted(kernel_variants.VARIANTS))
def test_variant_edits_apply(tmp_path: Path, name: str) -> None:
    root = kernel_variants.make_ours(name, tmp_path)
    kernels = root / "mlabatch" / "kernels"
    assert f'JIT_NAME = "mlabatch_kernels_jit_{name}"' in (kernels / "build.py").read_text()
    assert (kernels / "csrc" / "mla_limits.h").read_text().startswith(f"#define mlabatch mlabatch_{name}\n")
    expected: dict[str, str] = {}  # each file's text after each of its edits in turn: every edit lands its new text
    for f, old, new in kernel_variants.VARIANTS[name]:
        text = expected.get(f, (ROOT / "kernels" / f).read_text())
        expected[f] = kernel_variants.edit_text(text, [(old, new)], name)
        assert new in expected[f]
    for f, text in expected.items():
        assert (kernels / f).read_text() == text
    changed = set(expected)
    for f in changed | {kernel_variants.WG}:
        assert ((kernels / f).read_text() == (ROOT / "kernels" / f).read_text()) == (f not in changed)


def test_each_variant_schedules_with_its_own_limits(tmp_path: Path) -> None:
    for name in ("base", "rows32_two_cta"):
        kernel_variants.make_ours(name, tmp_path)
    base = kernel_variants.variant_scheduler("base", tmp_path)
    rows32 = kernel_variants.variant_scheduler("rows32_two_cta", tmp_path)
    # 32 query rows at d_qk 320: one CTA per SM in the tree, two in rows32_two_cta, whose limits.py says so
    assert rows32.num_sm_parts(132, 32, 1, 320) == 2 * base.num_sm_parts(132, 32, 1, 320) == 264
    assert rows32.num_sm_parts(132, 32, 1, 576) == base.num_sm_parts(132, 32, 1, 576) == 132


def test_an_edit_that_no_longer_applies_names_the_variant(tmp_path: Path) -> None:
    (tmp_path / "f.cuh").write_text("int a;\n")
    with pytest.raises(SystemExit, match="stale: expected one 'int b;'"):
        kernel_variants.apply_edits(tmp_path / "f.cuh", [("int b;", "int c;")], "stale")


def test_clean_flush_zeroes_the_buffer_as_the_tools_flush_does() -> None:
    import torch

    buf = torch.full((1 << 16,), 7, dtype=torch.uint8)
    kernel_variants.CleanFlush(buf).zero_()
    assert int(buf.max()) == 0
