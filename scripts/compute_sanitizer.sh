#!/usr/bin/env bash
# Runs the CUDA twins of the GMM tests under NVIDIA compute-sanitizer (memcheck, racecheck,
# initcheck, synccheck) on a GPU machine. Needs hgad_edge._C built with CUDA
# (FORCE_CUDA=1 pip install -e .) and compute-sanitizer from the CUDA toolkit on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
SAN=${COMPUTE_SANITIZER:-compute-sanitizer}
command -v "$SAN" >/dev/null || { echo "compute_sanitizer: $SAN not found (CUDA toolkit bin/ on PATH?)" >&2; exit 1; }
python -c "import hgad_edge.gmm as g, torch, sys; sys.exit(0 if g.has_cuda() and torch.cuda.is_available() else 'needs _C with CUDA and a GPU')"
tools=${HGAD_SANITIZER_TOOLS:-"memcheck racecheck initcheck synccheck"}
for tool in $tools; do
  echo "== compute-sanitizer --tool $tool"
  # torch's own allocator pre-touches memory: initcheck would flag torch internals, not ours
  extra=()
  [ "$tool" = initcheck ] && extra=(--track-unused-memory no)
  "$SAN" --tool "$tool" --error-exitcode 99 "${extra[@]}" \
    python -m pytest -q -p no:cacheprovider tests/unit/test_gmm.py -k "cuda" "$@"
done
echo "compute_sanitizer: all tools clean"
