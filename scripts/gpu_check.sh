#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one command, into ONE report file:
#   nvidia-smi · CUDA build (FORCE_CUDA=1) + TensorRT/pycuda · hgad_edge._C.has_cuda() · the GPU
#   tests (tests/gpu + the CUDA twins in tests/unit/test_gmm.py) · a tiny demo model · TensorRT
#   engines fp32/fp16/int8 · `hgad-edge bench --device cuda` · the GMM kernel benchmark (CPU rows
#   of benchmarks/gmm_kernel.py, plus the CUDA kernel timed here: that script has no CUDA rows).
#
# Usage: bash scripts/gpu_check.sh [REPORT.md]          (default gpu_check_report.md)
#   GPU_CHECK_DRY_RUN=1      run every step that needs no GPU (on the CPU: the CUDA build into a
#                            scratch wheel, the test files (GPU tests skip), the demo model, ONNX
#                            export, a CPU bench) and skip the GPU ones with a note
#   GPU_CHECK_BUDGET_S=480   wall-clock budget of the whole run; each step gets min(its cap, what
#                            is left), so the run ends within it (default 8 minutes)
#   GPU_CHECK_WORK=DIR       scratch folder (default: a fresh temp dir)
#   GPU_CHECK_SKIP_INSTALL=1 use the installed package as it is (no pip)
# Exit status: 0 when every step that ran passed, 1 otherwise (the report says which).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
REPORT=$(realpath -m "${1:-gpu_check_report.md}")
DRY=${GPU_CHECK_DRY_RUN:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
WORK=${GPU_CHECK_WORK:-$(mktemp -d -t hgad_gpu_check.XXXXXX)}
mkdir -p "$WORK/logs"
START=$(date +%s)
PY=${PYTHON:-python}
declare -a ROWS=()
declare -A STATUS=()
FAILED=0

note() { printf '%s\n' "$@" >>"$WORK/body.md"; }

# step NAME CAP_S GPU(0|1) NEEDS(step or -) COMMAND...
#   GPU=1: skipped in a dry run. NEEDS: skipped unless that step passed.
step() {
  local name=$1 cap=$2 gpu=$3 needs=$4
  shift 4
  local cmd="$*" left t0 t1 rc=0 why=""
  left=$((BUDGET - ($(date +%s) - START)))
  if [[ $gpu == 1 && $DRY == 1 ]]; then
    why="skipped (dry run: needs a GPU)"
  elif [[ $needs != - && ${STATUS[$needs]:-} != passed ]]; then
    why="skipped (needs step '$needs', which ${STATUS[$needs]:-did not run})"
  elif ((left < 5)); then
    why="skipped (budget of ${BUDGET}s used up)"
  fi
  if [[ -n $why ]]; then
    STATUS[$name]=skipped
    ROWS+=("| $name | $why | - |")
    note "" "## $name" "" "$why" "" '```' "$cmd" '```'
    echo "[gpu_check] $name: $why"
    return 0
  fi
  local limit=$((cap < left ? cap : left))
  echo "[gpu_check] $name (timeout ${limit}s): ${cmd%%$'\n'*}"
  t0=$(date +%s%N)
  timeout --kill-after=10 "$limit" bash -c "$cmd" >"$WORK/logs/$name.log" 2>&1 || rc=$?
  t1=$(date +%s%N)
  local secs status
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  if ((rc == 0)); then
    status=passed
  elif ((rc == 124 || rc == 137)); then
    status="TIMED OUT after ${limit}s"
  else
    status="FAILED (exit $rc)"
  fi
  [[ $status == passed ]] || FAILED=1
  STATUS[$name]=$([[ $status == passed ]] && echo passed || echo failed)
  ROWS+=("| $name | $status | $secs |")
  note "" "## $name — $status (${secs} s)" "" '```' "\$ $cmd" "$(tail -n 80 "$WORK/logs/$name.log")" '```'
  echo "[gpu_check] $name: $status (${secs} s)"
}

: >"$WORK/body.md"
DATA=$WORK/data
RUN=$WORK/run
MODE=$([[ $DRY == 1 ]] && echo "DRY RUN (no GPU steps)" || echo "GPU")

# ---------------------------------------------------------------------------------- steps
step nvidia-smi 30 1 - "nvidia-smi"

if [[ ${GPU_CHECK_SKIP_INSTALL:-0} == 1 ]]; then
  step install 5 0 - "echo 'GPU_CHECK_SKIP_INSTALL=1: using the installed hgad_edge as is'"
elif [[ $DRY == 1 ]]; then
  # the CUDA build only needs nvcc: compile it into a scratch wheel, leaving the installed package alone
  step install 420 0 - "command -v nvcc && FORCE_CUDA=1 CMAKE_BUILD_PARALLEL_LEVEL=\$(nproc) $PY -m pip wheel -q --no-deps \
--no-build-isolation -w '$WORK/wheel' . && $PY -m zipfile -e '$WORK'/wheel/*.whl '$WORK/wheel/x' && cd '$WORK' \
&& PYTHONPATH='$WORK/wheel/x' $PY -c \"import hgad_edge._C as c; print('built', c.__file__, 'has_cuda', c.has_cuda()); \
assert c.has_cuda(), 'FORCE_CUDA=1 built no CUDA kernel'\""
else
  # online: the extras too; offline (no index): rebuild from what is installed, then say what is missing
  step install 300 0 - "FORCE_CUDA=1 $PY -m pip install -q -e '.[test,tensorrt]' || { echo 'pip install with extras \
failed (offline?): rebuilding the extension only'; FORCE_CUDA=1 $PY -m pip install -q --no-deps --no-build-isolation -e .; }"
fi

step tensorrt-import 60 0 - "$PY - <<'EOF'
try:
    import tensorrt, pycuda.driver as cuda
    cuda.init()
    print('tensorrt', tensorrt.__version__, '| pycuda ok |', cuda.Device.count(), 'CUDA device(s)')
except Exception as e:  # noqa: BLE001
    print('NOTE: TensorRT/pycuda not usable here:', type(e).__name__, e)
    print('      the TensorRT steps and tests/gpu/test_tensorrt.py will fail or skip;'
          ' pip install \"hgad_edge[tensorrt]\" (tensorrt>=10, pycuda) on a machine with an index')
EOF"

step has-cuda 60 0 - "$PY -c \"import hgad_edge._C as c, hgad_edge.gmm as g; print('hgad_edge._C.has_cuda() =', \
c.has_cuda()); assert c.has_cuda(), 'hgad_edge._C was built without CUDA: FORCE_CUDA=1 pip install -e .'\""

step gpu-tests 300 0 - "$PY -m pytest -q -p no:cacheprovider -rs tests/gpu tests/unit/test_gmm.py"

step demo-data 60 0 - "hgad-edge make-demo-data '$DATA' --classes brick,tissue --n-train 12 --n-test 3 --image-size 128 \
--overwrite"

step train 180 0 demo-data "hgad-edge train --data '$DATA' --out '$RUN' --image-size 128 --coupling-blocks 1 --n-intra 2 \
--batch-size 4 --epochs 2 --quiet"

if [[ $DRY == 1 ]]; then
  step export-onnx 120 0 train "hgad-edge export '$RUN' --format onnx"
  step bench-cpu 120 0 export-onnx "hgad-edge bench '$RUN' --data '$DATA' --device cpu --frames 5 --warmup 1 --quiet \
--no-rss --json '$WORK/bench.json'"
fi
step export-tensorrt 240 1 train "hgad-edge export '$RUN' --format tensorrt --precision fp32 --precision fp16 \
--precision int8 --calib-images 16"
step bench-cuda 180 1 export-tensorrt "hgad-edge bench '$RUN' --data '$DATA' --device cuda --frames 50 --warmup 5 --quiet \
--json '$WORK/bench.json'"

step gmm-kernel-cpu 120 0 - "$PY benchmarks/gmm_kernel.py --quick --budget 0.1"
note "" "(benchmarks/gmm_kernel.py times the CPU kernel only: it has no CUDA rows. The CUDA entry points are timed by \
the gmm-kernel-cuda step below.)"

step gmm-kernel-cuda 120 1 - "$PY - <<'EOF'
# the CUDA GMM kernel at the target point (N, C, K, D) = (1344, 15, 10, 112), CUDA events, torch buffers
import numpy as np, torch
from hgad_edge import gmm as G
from tests.unit.test_gmm import make_level
rng = np.random.default_rng(0)
for n, c, k, d in [(256, 6, 10, 112), (1344, 15, 10, 112), (4096, 15, 10, 272)]:
    levels = [make_level(rng, n, c, k, d) for _ in range(3)]
    gms = [G.GaussianMixture(**p) for p, _, _ in levels]
    zs = [torch.from_numpy(z).cuda() for _, z, _ in levels]
    lds = [torch.from_numpy(ld).cuda() for _, _, ld in levels]
    ent = [torch.empty(n, device='cuda') for _ in levels]
    lp = [torch.empty(n, device='cuda') for _ in levels]
    means = torch.empty(3, c, device='cuda')
    cls = torch.empty(1, dtype=torch.int32, device='cuda')
    def three_levels():
        for l, g in enumerate(gms):
            g.inter_cuda(zs[l].data_ptr(), n, ent[l].data_ptr(), means[l].data_ptr())
        G.route_cuda(means.data_ptr(), 3, c, -1, cls.data_ptr())
        for l, g in enumerate(gms):
            g.intra_cuda(zs[l].data_ptr(), lds[l].data_ptr(), n, cls.data_ptr(), lp[l].data_ptr())
    def time_ms(fn, reps=200):
        for _ in range(10): fn()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(); a.record()
        for _ in range(reps): fn()
        b.record(); torch.cuda.synchronize()
        return a.elapsed_time(b) / reps
    gpu = time_ms(three_levels)
    z_np, ld_np = [z for _, z, _ in levels], [ld for _, _, ld in levels]
    import time
    t = time.perf_counter()
    for _ in range(20):
        inter = [g.inter(z) for g, z in zip(gms, z_np)]
        cc = G.route([m for _, m in inter])
        [g.intra(z, ld, cc) for g, z, ld in zip(gms, z_np, ld_np)]
    cpu = (time.perf_counter() - t) / 20 * 1e3
    host = G.route([g.inter(z)[1] for g, z in zip(gms, z_np)])
    assert int(cls.item()) == host, (int(cls.item()), host)
    print(f'N={n:5d} C={c:2d} K={k:2d} D={d:3d}  3 levels inter+route+intra: CUDA {gpu*1e3:8.1f} us   CPU kernel {cpu*1e3:9.1f} us   ({cpu/gpu:5.1f}x)')
EOF"

# ---------------------------------------------------------------------------------- report
TOTAL=$(($(date +%s) - START))
{
  echo "# hgad_edge GPU check — $MODE"
  echo ""
  echo "$(date -u '+%Y-%m-%d %H:%M UTC') · host $(hostname) · commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' (dirty)') · $($PY --version 2>&1) · total ${TOTAL} s of a ${BUDGET} s budget · work dir \`$WORK\`"
  echo ""
  echo "Overall: $([[ $FAILED == 0 ]] && echo 'every step that ran passed' || echo '**FAILURES** (see below)')"
  echo ""
  echo "| step | status | seconds |"
  echo "|---|---|---:|"
  printf '%s\n' "${ROWS[@]}"
  cat "$WORK/body.md"
} >"$REPORT"
echo "[gpu_check] report: $REPORT (${TOTAL} s)"
exit "$FAILED"
