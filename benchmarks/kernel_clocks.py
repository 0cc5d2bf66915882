"""Our decode kernel and FlashMLA, each replayed back to back for a few seconds, while nvidia-smi samples the SM
clock, power and temperature: are the compute-bound cases cycle-bound or power-bound, and does one kernel run at a
lower clock than the other? Uses the side-by-side tool's `make`, `graphed` and FlashMLA build (same inputs).

On the GPU machine, from the project root, with `.fmla/` and the CUTLASS wheel as ../shared/tools/README.md describes:
    python3 benchmarks/kernel_clocks.py --cases '128,1,128,4096;128,1,16,4096' --seconds 2 --rounds 3 --out $OUT/clocks.jsonl
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sample_smi(samples: list[tuple[float, float, float, float]], stop: threading.Event, every_ms: int) -> None:
    """Append (host time, SM MHz, watts, deg C) from nvidia-smi until `stop` is set."""
    proc = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw,temperature.gpu", "--format=csv,noheader,nounits",
                             f"-lms={every_ms}"], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        try:
            mhz, watts, deg = (float(x) for x in line.split(","))
        except ValueError:
            continue
        samples.append((time.time(), mhz, watts, deg))
        if stop.is_set():
            break
    proc.terminate()


def replay_for(fn, seconds: float) -> tuple[float, float, float]:
    """Replay `fn` (a graph replay) back to back for about `seconds`, one batch of 50 queued while the one before runs;
    return (device us per call, host start, host end)."""
    import torch

    fn()
    torch.cuda.synchronize()
    t0 = time.time()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    calls, queued = 0, None
    start.record()
    while time.time() - t0 < seconds:
        for _ in range(50):
            fn()
        calls += 50
        if queued is not None:
            queued.synchronize()
        queued = torch.cuda.Event()
        queued.record()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / calls, t0, time.time()


def window_means(samples: list[tuple[float, float, float, float]], t0: float, t1: float) -> dict:
    """Mean SM MHz, watts and deg C over the samples in the last 70% of the window [t0, t1] (the clock settles in
    the first part); None where no sample fell in it."""
    window = [s for s in samples if t0 + 0.3 * (t1 - t0) <= s[0] <= t1]
    mean = lambda i, digits: round(statistics.mean(s[i] for s in window), digits) if window else None  # noqa: E731
    return {"sm_mhz": mean(1, None), "watts": mean(2, None), "deg_c": mean(3, 1), "samples": len(window)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="128,1,128,4096", help="b,s_q,h_q,s_k;... (d_qk 576, d_v 512, h_kv 1, fixed lengths)")
    ap.add_argument("--seconds", type=float, default=2.0, help="back-to-back replays per kernel and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flashmla", type=Path, default=ROOT / ".fmla")
    ap.add_argument("--tool", type=Path, default=ROOT / ".fmla" / "flashmla_side_by_side.py")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch

    spec = importlib.util.spec_from_file_location("flashmla_side_by_side", args.tool)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.ARGS = argparse.Namespace(flashmla=str(args.flashmla))
    fm = tool.build_flashmla()
    from mlabatch.kernels import flash_mla_with_kvcache, get_mla_metadata

    out = args.out.open("w") if args.out else None

    def emit(**r) -> None:
        print(json.dumps(r), flush=True)
        if out:
            out.write(json.dumps(r) + "\n")

    samples: list[tuple[float, float, float, float]] = []
    stop = threading.Event()
    threading.Thread(target=sample_smi, args=(samples, stop, 20), daemon=True).start()
    time.sleep(1.0)
    for case in args.cases.split(";"):
        b, s_q, h_q, s_k = (int(x) for x in case.split(","))
        q, kc, tb, ln = tool.make(b, s_q, h_q, 1, [s_k] * b, 576, poison=False)
        m, sp = get_mla_metadata(ln, s_q * h_q, 1, head_dim_qk=576)
        scale = 576**-0.5
        _, _, tsm, ns = fm.dense_decode_fwd(q, kc, 512, ln, tb, scale, True, None, None)
        fns = {"ours": tool.graphed(lambda: flash_mla_with_kvcache(q, kc, tb, ln, 512, m, sp, causal=True, backend="cuda")),
               "flashmla": tool.graphed(lambda: fm.dense_decode_fwd(q, kc, 512, ln, tb, scale, True, tsm, ns))}
        order = list(fns)
        for r in range(args.rounds):
            for name in order[r % 2:] + order[: r % 2]:
                us, t0, t1 = replay_for(fns[name], args.seconds)
                emit(kernel=name, round=r, case=[b, s_q, h_q, s_k], us_per_call=round(us, 1), **window_means(samples, t0, t1))
                time.sleep(1.0)
    stop.set()


if __name__ == "__main__":
    main()
