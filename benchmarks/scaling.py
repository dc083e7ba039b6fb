"""How latency scales: image size, number of classes, intra-class centers K, coupling blocks.

One parameter varies at a time around the default (256², 15 classes, K = 10, 8 blocks); each
point is a synthetic model of those shapes (weights do not change latency), batch 1, timed on
ONNX Runtime, eager torch and the official-style pipeline in one process. One markdown table per
parameter and one PNG per parameter (total latency per backend; the ONNX Runtime stage split).

    python benchmarks/scaling.py                            # 2 threads, 40 frames per point
    python benchmarks/scaling.py --frames 100 --plots benchmarks/plots --json scaling.json
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

THREADS = C.threads_from_argv(2)

SWEEPS = {
    "image_size": (256, 384, 512),
    "n_classes": (1, 6, 15, 40),
    "n_intra": (1, 10),
    "coupling_blocks": (8, 12),
}
LABELS = {"image_size": "image size S (S×S)", "n_classes": "classes C", "n_intra": "intra-class centers K",
          "coupling_blocks": "coupling blocks per flow"}
BACKENDS = ("onnxruntime", "torch", "official-style")
PLOT_STAGES = ("preprocess", "backbone", "flow", "gmm", "postprocess")


def points():
    """(parameter, value, settings) for every point of every sweep."""
    for param, values in SWEEPS.items():
        for v in values:
            yield param, v, {**C.DEFAULTS, param: v}


def measure_point(model_dir: str, backend: str, threads: int, frames: int, warmup: int) -> dict:
    from latency import measure

    r = measure(backend, model_dir, threads, frames=frames, warmup=warmup, batches=(1,))
    return {k: v["median"] for k, v in r["batches"]["1"]["stages"].items()} | {
        "p90_total": r["batches"]["1"]["stages"]["total"]["p90"], "fps": r["batches"]["1"]["fps"]}


def run(threads: int, frames: int, warmup: int, cache: str, backends=BACKENDS, progress: bool = True) -> dict:
    """Every sweep; returns {param: [{value, backend: stage medians}]} plus the load averages."""
    import torch

    torch.set_num_threads(threads)
    res = {"threads": threads, "frames": frames, "load_average_start": [round(x, 2) for x in C.load_average()],
           "sweeps": {}}
    t_build = time.perf_counter()
    dirs = {}
    for param, v, s in points():  # build (or reuse) every model first, so timing is not mixed with export
        key = C.model_key(**s)
        if key not in dirs:
            if progress:
                print(f"  model {key} …", file=sys.stderr, flush=True)
            dirs[key] = C.model_dir(cache, **s)
    res["build_s"] = time.perf_counter() - t_build
    measured = {}
    t_meas = time.perf_counter()
    for param, v, s in points():
        key = C.model_key(**s)
        row = {"value": v}
        for b in backends:
            if (key, b) not in measured:  # the default point appears in every sweep: measure it once
                if progress:
                    print(f"  {key} {b} …", file=sys.stderr, flush=True)
                measured[key, b] = measure_point(dirs[key], b, threads, frames, warmup)
            row[b] = measured[key, b]
        res["sweeps"].setdefault(param, []).append(row)
    res["measure_s"] = time.perf_counter() - t_meas
    res["load_average_end"] = [round(x, 2) for x in C.load_average()]
    return res


def tables(res: dict) -> str:
    lines = []
    for param, rows in res["sweeps"].items():
        backends = [b for b in BACKENDS if b in rows[0]]
        lines += [f"#### {LABELS[param]}", "",
                  f"| {param} | " + " | ".join(f"{b} total" for b in backends)
                  + " | onnxruntime: " + " / ".join(PLOT_STAGES) + " | official / ORT |",
                  "|---:|" + "---:|" * (len(backends) + 2)]
        for r in rows:
            ort = r.get("onnxruntime", {})
            split = " / ".join(C.fmt(ort.get(k, float("nan")), ".1f") for k in PLOT_STAGES)
            ratio = (f"{r['official-style']['total'] / ort['total']:.1f}×"
                     if "official-style" in r and ort.get("total") else "-")
            lines.append(f"| {r['value']} | " + " | ".join(C.fmt(r[b]["total"]) for b in backends)
                         + f" | {split} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def plots(res: dict, out_dir: str) -> list:
    """One PNG per sweep: total ms per backend (left), the ONNX Runtime stage split (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    written = []
    for param, rows in res["sweeps"].items():
        xs = [r["value"] for r in rows]
        pos = list(range(len(xs)))
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        for b in BACKENDS:
            if b in rows[0]:
                ax1.plot(pos, [r[b]["total"] for r in rows], marker="o", label=b)
        ax1.set_xticks(pos, [str(x) for x in xs])
        ax1.set_xlabel(LABELS[param])
        ax1.set_ylabel("median ms per frame (batch 1)")
        ax1.set_title("total latency")
        ax1.set_ylim(bottom=0)
        ax1.legend()
        ax1.grid(alpha=0.3)
        if "onnxruntime" in rows[0]:
            bottom = [0.0] * len(xs)
            for st in PLOT_STAGES:
                vals = [r["onnxruntime"].get(st, 0.0) for r in rows]
                ax2.bar(pos, vals, bottom=bottom, label=st)
                bottom = [a + b for a, b in zip(bottom, vals)]
            ax2.set_xticks(pos, [str(x) for x in xs])
            ax2.set_xlabel(LABELS[param])
            ax2.set_ylabel("median ms per frame")
            ax2.set_title("onnxruntime: per stage")
            ax2.legend(fontsize=8)
        fig.suptitle(f"hgad_edge latency vs {LABELS[param]} — {res['threads']} threads, load "
                     f"{res['load_average_start'][0]}")
        fig.tight_layout()
        path = os.path.join(out_dir, f"scaling_{param}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="threads of every library (default 2)")
    ap.add_argument("--frames", type=int, default=40, help="timed frames per point and backend (default 40)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed frames first (default 5)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help=f"subset of {','.join(BACKENDS)}")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "hgad_edge_bench"),
                    help="where synthetic models are built and reused")
    ap.add_argument("--plots", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "plots"),
                    help="folder for the PNG plots")
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    backends = C.backend_list(a.backends, BACKENDS)
    res = run(a.threads, a.frames, a.warmup, a.cache, backends)
    res["plots"] = plots(res, a.plots)
    print(tables(res))
    C.write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
