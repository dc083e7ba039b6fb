"""Every precision tier of one trained model against ONNX Runtime fp32 and the official-style
eager pipeline, in one run: accuracy on the test set and end-to-end latency at batch 1 and 8.

Decoded frame in → ``Result`` out. Tiers: the official-style pipeline (``_official.py``: eager
torch, unfolded FrEIA flows, the official GMM formula, torchvision/scipy pre/postprocessing),
the torch backend, and every usable exported variant (ONNX Runtime fp32/int8, OpenVINO
fp32/bf16/int8, …). Each tier runs in a spawned process of its own (its thread pools cannot
spin into another tier's turn; its peak RSS is its own); for each batch size the tiers take
turns of ``--round`` frames on the same frames (same load for all), ``--frames`` timed frames
each after ``--warmup``; the ratios are of medians from that one run. Per tier also: image /
pixel AUROC on the test set (class given, each tier with its own calibration), the
accuracy-gate drop recorded at export, the peak RSS of its process and the files it loads.

    python benchmarks/speedup.py RUN_DIR --data DATA --threads 2

The headline: the fastest tier whose image and pixel AUROC are both within ``--tol`` (0.005)
of fp32 (the ONNX Runtime fp32 row), and its speed-up over ONNX Runtime fp32 and over the
official-style pipeline, per frame at batch 1 and at batch 8.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common as C  # noqa: E402

THREADS = C.threads_from_argv(2)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from hgad_edge.artifact import Artifact  # noqa: E402
from hgad_edge.detector import Detector  # noqa: E402
from hgad_edge.evaluation.bench import _size_mb, variant_files  # noqa: E402
from hgad_edge.evaluation.evaluator import evaluate  # noqa: E402

STAGES = ("preprocess", "backbone", "flow", "gmm", "postprocess", "total")
OFFICIAL = "official-style"
CPU_TIERS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "bf16"), ("onnxruntime", "int8"),
             ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"))


def tiers_of(art: Artifact, only: str = ""):
    """(backend, precision) of every usable CPU tier of ``art`` (``only``: "b/p,b/p" subset)."""
    out = [t for t in CPU_TIERS if t[1] in art.usable_precisions(t[0])]
    if only:
        want = {tuple(x.split("/")) for x in only.split(",")}
        out = [t for t in out if t in want]
    return out


def name_of(tier) -> str:
    return tier if isinstance(tier, str) else f"{tier[0]} {tier[1]}"


def _worker(conn, model: str, tier, threads: int, paths) -> None:  # noqa: C901 - one command loop
    """One tier in a process of its own (its thread pools, allocator and peak RSS are its own):
    answers JSON commands on ``conn`` (no pickle) — warm, rss, eval, run, quit."""
    import json

    frames = [cv2.imread(p, cv2.IMREAD_COLOR) for p in paths]
    official = isinstance(tier, str)
    if official:
        from _official import OfficialStylePipeline

        runner = OfficialStylePipeline(model, int(tier.rsplit("@", 1)[1]) if "@" in tier else threads)
    else:
        runner = Detector(model, backend=tier[0], precision=tier[1], device="cpu", threads=threads)

    def call(batch):
        return runner.predict(batch) if official else [r.timings_ms for r in runner.predict(batch)]

    def batch_at(start: int, b: int):
        return [frames[(start + i) % len(frames)] for i in range(b)]

    conn.send_bytes(b'{"ready": true}')
    while True:
        msg = json.loads(conn.recv_bytes())
        op = msg["op"]
        if op == "quit":
            break
        if op == "warm":
            for i in range(msg["calls"]):
                call(batch_at(i * msg["batch"], msg["batch"]))
            out = {}
        elif op == "rss":
            from hgad_edge.evaluation.bench import peak_rss_mb

            out = {"rss": peak_rss_mb()}
        elif op == "eval":
            out = {}
            if not official:
                rep = evaluate(model, msg["data"], detector=runner, progress=False)
                out = {"image": rep["mean"]["known"]["image_auroc"], "pixel": rep["mean"]["known"]["pixel_auroc"]}
        else:  # run: ``calls`` timed calls of ``batch`` frames from frame ``start``
            b, lat, stages = msg["batch"], [], []
            for i in range(msg["calls"]):
                batch = batch_at(msg["start"] + i * b, b)
                t0 = time.perf_counter()
                timings = call(batch)
                lat.append((time.perf_counter() - t0) * 1e3 / b)  # ms per frame
                stages.append(timings[0])
            out = {"lat": lat, "stages": stages}
        conn.send_bytes(json.dumps(out).encode())
    if hasattr(runner, "close"):
        runner.close()


def main(argv=None) -> int:
    import json
    import multiprocessing

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a trained RUN_DIR with its exports")
    ap.add_argument("--data", required=True, help="dataset root; its test split is scored, its test images are the frames")
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--frames", type=int, default=100, help="timed frames per tier and batch size")
    ap.add_argument("--warmup", type=int, default=16, help="warm-up frames per tier and batch size")
    ap.add_argument("--round", type=int, default=8, help="frames per tier turn")
    ap.add_argument("--batches", default="1,8", help="batch sizes")
    ap.add_argument("--tiers", default="", help="subset, e.g. onnxruntime/fp32,openvino/int8 (default: every usable one)")
    ap.add_argument("--tol", type=float, default=0.005, help="AUROC tolerance vs fp32 for the headline tier")
    ap.add_argument("--no-official", action="store_true", help="leave out the official-style pipeline")
    ap.add_argument("--official-threads", default="",
                    help="also the official-style pipeline on these torch thread counts, e.g. 1 (eager torch's "
                         "OpenMP barriers stall on a loaded box; the faster official-style row is the reference)")
    a = ap.parse_args(argv)
    batches = [int(b) for b in a.batches.split(",")]
    paths = sorted(glob.glob(os.path.join(a.data, "*", "test", "*", "*.png")))
    if not paths:
        raise SystemExit(f"no test images under {a.data}/*/test/*/")
    rng = np.random.default_rng(0)
    paths = [paths[i] for i in rng.permutation(len(paths))[:40]]  # every class and kind, fixed order
    art = Artifact.read(a.model)
    tiers = tiers_of(art, a.tiers)
    if ("onnxruntime", "fp32") not in tiers:
        raise SystemExit(f"{a.model} has no usable ONNX Runtime fp32 export (the reference tier)")
    officials = [] if a.no_official else [OFFICIAL] + [f"{OFFICIAL}@{n}" for n in a.official_threads.split(",") if n]
    every = list(tiers) + officials
    t_start = time.time()
    ctx = multiprocessing.get_context("spawn")
    workers = {}
    for t in every:  # one at a time: loading is not timed, but keep the box quiet for the others
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, a.model, t, a.threads, paths), daemon=True)
        proc.start()
        json.loads(parent.recv_bytes())
        workers[name_of(t)] = (proc, parent)

    def ask(name, **msg):
        conn = workers[name][1]
        conn.send_bytes(json.dumps(msg).encode())
        return json.loads(conn.recv_bytes())

    for b in batches:
        for n in workers:
            ask(n, op="warm", batch=b, calls=max(1, a.warmup // b))
    rss = {n: ask(n, op="rss")["rss"] for n in workers}  # loaded and warm at every batch size
    acc = {}
    for n in workers:
        r = ask(n, op="eval", data=a.data)
        if r:
            acc[n] = (r["image"], r["pixel"])
            print(f"  {n}: image / pixel AUROC {r['image']:.4f} / {r['pixel']:.4f}", file=sys.stderr, flush=True)
    lat = {b: {n: [] for n in workers} for b in batches}
    stages = {n: [] for n in workers}
    load0 = C.load_average()
    for b in batches:
        per_turn = max(1, a.round // b)
        need = max(1, a.frames // b)
        start = 0
        while min(len(v) for v in lat[b].values()) < need:
            for n in workers:
                r = ask(n, op="run", batch=b, calls=per_turn, start=start)
                lat[b][n] += r["lat"]
                if b == 1:
                    stages[n] += r["stages"]
            start += per_turn * b
    load1 = C.load_average()
    for proc, conn in workers.values():
        conn.send_bytes(b'{"op": "quit"}')
        proc.join(30)
    wall = time.time() - t_start

    med = {b: {n: float(np.median(v)) for n, v in lat[b].items()} for b in batches}
    p99 = {b: {n: float(np.percentile(v, 99)) for n, v in lat[b].items()} for b in batches}
    ref_acc = acc["onnxruntime fp32"]
    print(f"{a.model}: {C.cpu_model()} ({', '.join(C.cpu_flags())}), {os.cpu_count()} CPUs, {a.threads} threads; "
          f"load average {load0[0]:.2f} → {load1[0]:.2f}; {a.frames} timed frames per tier and batch size after "
          f"{a.warmup} warm-up, each tier in its own process, tiers taking turns of {a.round} frames; "
          f"{wall / 60:.1f} min\n")
    cols = " | ".join(f"p50 b{b} | p99 b{b}" for b in batches)
    print(f"| tier | image AUROC | pixel AUROC | gate drop | {cols} | peak RSS MB | size MB |")
    print("|---|---:|---:|---:|" + "---:|" * (2 * len(batches)) + "---:|---:|")
    for n in workers:
        t = next((t for t in tiers if name_of(t) == n), None)
        sec = art.variant(*t) if t else None
        gate = (sec or {}).get("accuracy_gate") or {}
        drop = "-" if not gate else f"{gate['drop']:+.4f}" + ("" if gate["status"] == "passed" else " ✗")
        img, pix = acc.get(n, (float("nan"), float("nan")))
        size = _size_mb(a.model, variant_files(art, *t)) if t else float("nan")
        cells = " | ".join(f"{med[b][n]:.2f} | {p99[b][n]:.2f}" for b in batches)
        print(f"| {n} | {C.fmt(img, '.3f')} | {C.fmt(pix, '.3f')} | {drop} | {cells} | {rss[n]:.0f} | "
              f"{C.fmt(size, '.1f')} |")
    print("\nms per frame (a batch-8 call's time / 8); AUROC: test split, class given, mean over classes; gate drop: "
          "synthetic-defect AUROC drop vs fp32 measured at export (✗: above --max-drop, refused by default); peak RSS: "
          "the tier's process after loading and warming up (imports included).\n")
    print("| tier (batch 1, median ms) | " + " | ".join(STAGES) + " |")
    print("|---|" + "---:|" * len(STAGES))
    for n in workers:
        print(f"| {n} | " + " | ".join(f"{np.median([s.get(k, 0.0) for s in stages[n]]):.2f}" for k in STAGES) + " |")
    # within tolerance = neither AUROC more than --tol below fp32's
    ok = [n for n in acc if ref_acc[0] - acc[n][0] <= a.tol and ref_acc[1] - acc[n][1] <= a.tol]
    print()
    for b in batches:
        best = min(ok, key=lambda n: med[b][n])
        line = (f"batch {b}: fastest tier within {a.tol} AUROC of fp32: {best} {med[b][best]:.2f} ms/frame — "
                f"{med[b]['onnxruntime fp32'] / med[b][best]:.2f}× ONNX Runtime fp32 ({med[b]['onnxruntime fp32']:.2f} ms)")
        if officials:
            ref = min(officials, key=lambda n: med[b][n])  # the faster official-style row
            line += f", {med[b][ref] / med[b][best]:.2f}× {ref} ({med[b][ref]:.2f} ms)"
        print(line)
        fastest = min(acc, key=lambda n: med[b][n])
        if fastest not in ok:
            print(f"batch {b}: the fastest tier overall, {fastest} ({med[b][fastest]:.2f} ms/frame), is outside the "
                  f"tolerance (image / pixel AUROC {acc[fastest][0]:.4f} / {acc[fastest][1]:.4f} vs fp32 "
                  f"{ref_acc[0]:.4f} / {ref_acc[1]:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
