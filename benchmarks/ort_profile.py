"""ONNX Runtime per-operator profile of exported graphs (fp32 vs int8): where the time goes.

    python benchmarks/ort_profile.py RUN_DIR/backbone.onnx RUN_DIR/backbone_int8.onnx --batch 1 --threads 2

Runs each graph ``--runs`` times on random inputs of the graph's shapes (batch ``--batch``) with
ONNX Runtime's profiler and prints the kernel time per operator type (ms per run, share).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import numpy as np


def profile(path: str, batch: int, threads: int, runs: int) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.random([batch if isinstance(d, str) else d for d in i.shape], dtype=np.float32)
             for i in s.get_inputs()}
    for _ in range(runs):
        s.run(None, feeds)
    trace = s.end_profiling()
    with open(trace, encoding="utf-8") as f:
        events = json.load(f)
    os.remove(trace)
    dur, count = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            dur[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    total = sum(dur.values())
    print(f"{path}: {total / runs / 1e3:.2f} ms kernel time per run (batch {batch}, {threads} threads)")
    for op, d in dur.most_common(12):
        print(f"  {op:22s} {d / runs / 1e3:7.3f} ms  {100 * d / total:5.1f} %  ×{count[op] // runs}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graphs", nargs="+", help="ONNX files")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    a = ap.parse_args(argv)
    for g in a.graphs:
        profile(g, a.batch, a.threads, a.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
