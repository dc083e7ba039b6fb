#!/usr/bin/env bash
# The main job, end to end on CPU: install → demo data → train → eval → overlays
# (→ export → stream once those verbs are installed). Usage: bash scripts/demo.sh [WORKDIR]
# Re-runnable on the same WORKDIR: the dataset is kept once written, a finished training is kept
# as it is (train --resume: an interrupted one continues), the other outputs are rewritten.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-demo_work}
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e .
mkdir -p "$WORK"
if [[ ! -f "$WORK/data/demo_data.json" ]]; then  # the dataset appears in one rename, with this file
  hgad-edge make-demo-data "$WORK/data"
fi
hgad-edge train --data "$WORK/data" --out "$WORK/run" ${EPOCHS:+--epochs $EPOCHS} --resume
hgad-edge eval "$WORK/run" --data "$WORK/data" --full --json "$WORK/metrics.json"
hgad-edge predict "$WORK/run" "$WORK"/data/*/test/[!g]*/000.png "$WORK"/data/*/test/good/000.png \
  --out "$WORK/overlays"
if hgad-edge export --help >/dev/null 2>&1; then
  hgad-edge export "$WORK/run" --format onnx
fi
if python -c "import hgad_edge.stream" 2>/dev/null; then
  rm -f "$WORK/stream.jsonl" "$WORK/stream.mp4"  # this script's own outputs (--jsonl appends)
  python -m hgad_edge.stream --model "$WORK/run" --source "$WORK/data/brick/test/scratch" --headless \
    --jsonl "$WORK/stream.jsonl" --save "$WORK/stream.mp4"
fi
echo "done: metrics in $WORK/metrics.json, overlays in $WORK/overlays/"
