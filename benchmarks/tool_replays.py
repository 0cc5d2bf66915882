"""The side-by-side tool itself, with every replay time kept and, optionally, one named edit to its order.

The tool (../shared/tools/flashmla_side_by_side.py) times each case once per kernel, ours first, and reports the
median of 30 flushed replays. On the H200 the kernel timed first in a case spends its first 6-20 replays 3-7%
slower while the GPU steps its clocks (results md, twenty-eighth section), so which kernel goes first moves single
cases by that much. This runs the tool's own source (so its cases, inputs, timer and flush) with its timer keeping
every replay time, which the perf lines then carry as `replays` (in the order `order`), and with one edit:
    none        the tool as it is
    fmfirst     FlashMLA timed before ours in every case
    nopreamble  without the copy-bandwidth and GEMM lines before the cases
    only512     the 512 x h_q=16 case alone, after the copy and GEMM lines

On the GPU machine, from the project root, with `.fmla/` as ../shared/tools/README.md describes:
    python3 benchmarks/tool_replays.py fmfirst > $OUT/tool-fmfirst.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER_EDITS = ("none", "fmfirst", "nopreamble", "only512")

OURS_TIMED = """        try:
            o_ours, _ = ours()
            res["ours"] = timed(graphed(ours), 30, flush)
        except Exception as e:
            emit(case=base, ours_error=str(e)[:300]); o_ours = None
"""
FM_TIMED = """        if fm is not None and d == 576 and dv == 512:
            o_fm, lse_fm, tsm, ns = fm.dense_decode_fwd(q, kc, dv, ln, tb, scale, True, None, None)
            fmf = lambda: fm.dense_decode_fwd(q, kc, dv, ln, tb, scale, True, tsm, ns)
            res["flashmla"] = timed(graphed(fmf), 30, flush)
"""


def edited_tool(source: str, edit: str) -> str:
    """The tool's source with its timer keeping every replay (added to each perf line) and `edit` applied."""
    edits = [
        ("def timed(fn, iters, flush):", "LAST = []\n\n\ndef timed(fn, iters, flush):"),
        ("    return statistics.median(s.elapsed_time(e) for s, e in zip(s_ev, e_ev)) * 1e3",
         "    LAST.append([round(s.elapsed_time(e) * 1e3, 1) for s, e in zip(s_ev, e_ev)])\n"
         "    return statistics.median(s.elapsed_time(e) for s, e in zip(s_ev, e_ev)) * 1e3"),
        ('        emit(case="perf", **rec)', '        emit(case="perf", replays=LAST[-len(res):], order=list(res), **rec)'),
    ]
    if edit == "fmfirst":
        edits.append((OURS_TIMED + FM_TIMED, FM_TIMED + OURS_TIMED))
    elif edit == "nopreamble":
        edits += [
            ("    src = torch.empty(1 << 30, dtype=torch.bfloat16, device=dev); dst = torch.empty_like(src)\n",
             "    src = torch.empty(1); dst = src\n"),
            ("    copy_us = timed(lambda: dst.copy_(src), 20, flush)\n", "    copy_us = 1e9\n"),
            ("    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16); bm = torch.randn_like(a)\n", "    a = bm = None\n"),
            ("    mm_us = timed(lambda: a @ bm, 10, flush)\n", "    mm_us = 1e9\n"),
        ]
    elif edit == "only512":
        edits.append(("    for b, s_q, h_q, h_kv, s_k, d, dv, varlen in cases:",
                      "    for b, s_q, h_q, h_kv, s_k, d, dv, varlen in [c for c in cases if c[0] == 512]:"))
    for old, new in edits:
        if source.count(old) != 1:
            raise SystemExit(f"the tool's source changed: expected one {old[:60]!r}, found {source.count(old)}")
        source = source.replace(old, new)
    return source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("edit", choices=ORDER_EDITS)
    ap.add_argument("--tool", type=Path, default=ROOT / ".fmla" / "flashmla_side_by_side.py")
    ap.add_argument("--flashmla", type=Path, default=ROOT / ".fmla", help="FlashMLA's sources, as the tool takes them")
    args = ap.parse_args()
    code = edited_tool(args.tool.read_text(), args.edit)
    sys.argv = [str(args.tool), "--flashmla", str(args.flashmla), "--project", str(ROOT)]
    exec(compile(code, str(args.tool), "exec"), {"__name__": "__main__", "__file__": str(args.tool)})


if __name__ == "__main__":
    main()
