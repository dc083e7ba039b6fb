"""ONNX Runtime vs the torch backend (unfolded FrEIA flows) on one trained model, end to end.

Decoded frame in → ``Result`` out, batch 1. The backends take turns in rounds of ``--round``
frames (same frames, same load for both), ``--frames`` timed frames each after ``--warmup``;
prints per-stage medians (``Result.timings_ms``), p50/p99 of the total and the speed-up.

    python benchmarks/speedup.py RUN_DIR --data DATA --threads 2
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common as C  # noqa: E402

THREADS = C.threads_from_argv(2)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from hgad_edge import Detector  # noqa: E402

STAGES = ("preprocess", "backbone", "flow", "gmm", "postprocess", "total")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a trained RUN_DIR with the ONNX export")
    ap.add_argument("--data", required=True, help="dataset root; its test images are the frames")
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--frames", type=int, default=100, help="timed frames per backend")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--round", type=int, default=10, help="frames per backend turn")
    a = ap.parse_args(argv)
    paths = sorted(glob.glob(os.path.join(a.data, "*", "test", "*", "*.png")))[:20]
    if not paths:
        raise SystemExit(f"no test images under {a.data}/*/test/*/")
    frames = [cv2.imread(p, cv2.IMREAD_COLOR) for p in paths]
    dets = {b: Detector(a.model, backend=b, threads=a.threads) for b in ("torch", "onnxruntime")}
    for det in dets.values():
        for f in frames[:a.warmup]:
            det(f)
    rows = {b: [] for b in dets}
    load0 = C.load_average()
    i = 0
    while min(len(r) for r in rows.values()) < a.frames:
        for b, det in dets.items():
            for k in range(a.round):
                rows[b].append(det(frames[(i + k) % len(frames)]).timings_ms)
        i += a.round
    load1 = C.load_average()
    print(f"{a.model}: batch 1, {a.threads} threads, {a.frames} timed frames per backend after {a.warmup} "
          f"warm-up, rounds of {a.round}; load average {load0[0]:.2f} → {load1[0]:.2f}\n")
    print("| backend | " + " | ".join(STAGES) + " | p99 total |")
    print("|---|" + "---:|" * (len(STAGES) + 1))
    med = {}
    for b, r in rows.items():
        med[b] = {s: float(np.median([t[s] for t in r])) for s in STAGES}
        p99 = float(np.percentile([t["total"] for t in r], 99))
        print(f"| {b} | " + " | ".join(f"{med[b][s]:.2f}" for s in STAGES) + f" | {p99:.2f} |")
    sp = {s: med["torch"][s] / med["onnxruntime"][s] for s in ("backbone", "flow", "total")}
    print(f"\nONNX Runtime speed-up (medians): total {sp['total']:.2f}×, backbone {sp['backbone']:.2f}×, "
          f"flow {sp['flow']:.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
