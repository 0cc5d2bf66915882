#!/usr/bin/env bash
# One device call: JIT-build the extension, run the GPU tests, compute-sanitizer memcheck, benchmark, ncu.
# Usage (repo root, on the GPU machine):
#   tests/gpu/run_on_device.sh [build] [test] [memcheck] [bench] [wheel] [sass] [ncu] [ncuwg]
# Logs and results go to $OUT (default ./.device_out). mlabatch is imported from this checkout through a shim.
set -uo pipefail
OUT=${OUT:-$PWD/.device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MLABATCH_KERNELS_CACHE=${MLABATCH_KERNELS_CACHE:-/tmp/mlabatch-kernels}
shim=/tmp/mlabatch-shim
mkdir -p $shim/mlabatch && for p in kernels models conf; do ln -sfn "$PWD/$p" $shim/mlabatch/$p; done && touch $shim/mlabatch/__init__.py
export PYTHONPATH=$shim${PYTHONPATH:+:$PYTHONPATH}
rc=0
steps=${*:-build test memcheck bench}
for step in $steps; do
  case $step in
    build)
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$OUT/device.txt"
      python3 -c "import torch; print(torch.__version__, torch.version.cuda)" | tee -a "$OUT/device.txt"
      start=$(date +%s)
      MLABATCH_JIT_VERBOSE=1 python3 -c "
from mlabatch.kernels import info; import json; print(json.dumps(info(), indent=1))" >"$OUT/build.log" 2>&1 || rc=1
      echo "build: $(( $(date +%s) - start )) s rc=$rc"; tail -n 12 "$OUT/build.log" ;;
    test)
      timeout 300 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_kernel_cuda.py --maxfail=5 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 15 || rc=1 ;;
    memcheck)
      timeout 120 compute-sanitizer --tool memcheck --error-exitcode 7 python3 tests/gpu/memcheck_kernel.py >"$OUT/memcheck.log" 2>&1
      echo "memcheck rc=$?"; tail -n 8 "$OUT/memcheck.log" ;;
    bench)
      python3 benchmarks/kernel.py --out "$OUT/kernel-h100.jsonl" 2>&1 | tee "$OUT/bench.log" || rc=1 ;;
    wheel)
      start=$(date +%s)
      MAX_JOBS=16 python3 -m pip wheel -q --no-build-isolation --no-deps --no-index -w /tmp/mlabatch-whl . >"$OUT/wheel.log" 2>&1 || rc=1
      echo "wheel: $(( $(date +%s) - start )) s"; tail -n 5 "$OUT/wheel.log"; python3 -m zipfile -l /tmp/mlabatch-whl/mlabatch-*.whl | grep -E "_C|csrc" | head -3
      python3 -m pip install -q --no-deps --no-index --target /tmp/mlabatch-site /tmp/mlabatch-whl/mlabatch-*.whl
      (cd /tmp && PYTHONPATH=/tmp/mlabatch-site python3 -c "
from mlabatch.kernels import info; print(info())") 2>&1 | tail -n 3 ;;
    sass)
      so=$(ls "$MLABATCH_KERNELS_CACHE"/*/*.so | head -1)
      cuobjdump -sass "$so" >/tmp/sass.txt 2>&1
      awk '/Function : .*mla_decode_kernelI13__nv_bfloat16Li576ELi512ELi1/{f=1;next} /Function :/{f=0} f' /tmp/sass.txt \
        | grep -oE "(HMMA[.0-9A-Z]*|LDSM[.A-Z0-9]*|BAR[.A-Z]*|LDL|STL|MUFU.EX2)" | sort | uniq -c
      awk '/Function : .*mla_decode_wgmma_kernelI13__nv_bfloat16Li576ELi512/{f=1;next} /Function :/{f=0} f' /tmp/sass.txt \
        | grep -oE "(HGMMA[.0-9A-Z]*|WARPGROUP[.A-Z]*|LDL|STL|BAR[.A-Z]*)" | sort | uniq -c ;;
    ncuwg)
      ncu --kernel-name regex:mla_decode --launch-skip 1 --launch-count 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
        --metrics sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_active,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_math_pipe_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio,smsp__average_warps_issue_stalled_short_scoreboard_per_issue_active.ratio,smsp__average_warps_issue_stalled_membar_per_issue_active.ratio,smsp__average_warps_issue_stalled_sleeping_per_issue_active.ratio,smsp__average_warps_issue_stalled_misc_per_issue_active.ratio,smsp__average_warps_issue_stalled_dispatch_stall_per_issue_active.ratio,smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio,lts__t_sector_hit_rate.pct,smsp__inst_executed.sum \
        python3 tests/gpu/profile_case.py 128 2 128 4096 576 512 >"$OUT/ncuwg.log" 2>&1
      grep -E "Duration|DRAM Through|L2 Hit|Compute \(SM\) Th|sm__pipe|smsp__|lts__" "$OUT/ncuwg.log" | grep -v "^==" ;;
    ncu)
      for args in "128 1 16 4096 576 512" "128 1 128 4096 576 512" "256 1 9 1024 320 256"; do
        echo "== ncu case $args" >>"$OUT/ncu.log"
        ncu --kernel-name regex:mla_decode_kernel --launch-skip 1 --launch-count 1 --section SpeedOfLight \
          --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats --section ComputeWorkloadAnalysis \
          python3 tests/gpu/profile_case.py $args >>"$OUT/ncu.log" 2>&1
      done
      grep -E "== ncu|Duration|DRAM Throughput|Compute \(SM\) Th|Achieved Occupancy|Warp Cycles Per Issued|Issue Slots Busy|Pipe" "$OUT/ncu.log" | head -40 ;;
  esac
done
exit $rc
