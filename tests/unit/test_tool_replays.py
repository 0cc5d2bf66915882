"""benchmarks/tool_replays.py: its edits apply to the side-by-side tool's source and give code that compiles, and a
source without one of their anchors stops with the anchor named."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("tool_replays", ROOT / "benchmarks" / "tool_replays.py")
tool_replays = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool_replays)
TOOL = ROOT.parent / "shared" / "tools" / "flashmla_side_by_side.py"  # the shared tool, beside the checkout


@pytest.mark.skipif(not TOOL.exists(), reason=f"the side-by-side tool is not at {TOOL}")
@pytest.mark.parametrize("edit", tool_replays.ORDER_EDITS)
def test_edits_apply_to_the_tool_and_compile(edit: str) -> None:
    code = tool_replays.edited_tool(TOOL.read_text(), edit)
    compile(code, str(TOOL), "exec")
    assert "replays=LAST[-len(res):], order=list(res)" in code
    if edit == "fmfirst":
        assert code.index('res["flashmla"] = timed') < code.index('res["ours"] = timed')


def test_a_source_without_an_anchor_names_it() -> None:
    with pytest.raises(SystemExit, match="expected one 'def timed"):
        tool_replays.edited_tool("print('not the tool')\n", "none")
