"""Many cameras on one box: K file sources through ONE batched stream process vs K separate
single-source processes on the same cores, and the Detector's own batch-K throughput.

Every run is a fresh worker process pinned to the same cores (``--cores``), scoring every
frame of its video files in order (no drops: throughput, not pacing). The batched process runs
``run_sources`` with all K sources and ``--threads`` = the number of cores; each separate
process runs one source with ``cores // K`` threads (at least 1), so both use the same cores.
Aggregate scored FPS counts only the window in which every process of a run was scoring
(startup and model loading excluded), and scored frames per CPU second of those processes in that
window (what a shared, loaded box cannot distort: more processes there also means a larger share
of the CPU against other users). Latency is the detector call each frame waited for (a
whole batch in the batched process), p50/p99 per source, median over sources. RSS is the peak
(VmHWM) summed over a run's processes. Runs of K and of the two modes are interleaved over
``--repeats`` rounds; the table shows medians.

    python benchmarks/multistream.py                          # synthetic default model (256², 15 classes)
    python benchmarks/multistream.py --model RUN --k 1,2,4,8 --frames 100 --repeats 3
    python benchmarks/multistream.py --k 4 --repeats 0 --batch-gain   # only: what batching buys the Detector
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- workers (one process each)


def _peak_rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _worker(a: argparse.Namespace) -> dict:
    """Score the videos in this process (``--mode stream``) or time ``Detector.predict`` on
    their decoded frames (``--mode direct``); returns what the parent aggregates."""
    import cv2

    from hgad_edge.detector import Detector

    det = Detector(a.model, backend=a.backend, threads=a.threads)
    videos = a.videos.split(",")
    cap = cv2.VideoCapture(videos[0])
    ok, frame = cap.read()
    cap.release()
    for _ in range(3):  # warm-up at the batch size the run will use
        det.predict([frame] * len(videos))
    if a.mode == "direct":
        frames = []
        for v in videos:
            cap = cv2.VideoCapture(v)
            while True:
                ok, f = cap.read()
                if not ok:
                    break
                frames.append(f)
            cap.release()
        b = len(videos)
        batches = [frames[i:i + b] for i in range(0, len(frames) - b + 1, b)]
        calls = []
        t0, c0 = time.perf_counter(), time.process_time()
        for batch in batches:
            t = time.perf_counter()
            det.predict(batch)
            calls.append((time.perf_counter() - t) * 1e3)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        return {"frames": b * len(batches), "seconds": total, "cpu_s": cpu, "call_ms": calls, "rss_mb": _peak_rss_mb()}
    from hgad_edge.stream import MultiStreamConfig, SourceSpec, run_sources

    times: List[tuple] = []  # (wall, this process's CPU seconds, all threads) at each result
    cfg = MultiStreamConfig(sources=tuple(SourceSpec(f"s{i}", v, alarm=(3, 5)) for i, v in enumerate(videos)))
    s = run_sources(cfg, detector=det, on_result=lambda sid, i, r: times.append((time.time(), time.process_time())))
    return {"times": times, "lat_p50": [x.latency_p50_ms for x in s.sources],
            "lat_p99": [x.latency_p99_ms for x in s.sources], "scored": s.frames_scored,
            "mean_batch": s.mean_batch, "rss_mb": _peak_rss_mb()}


def batch_gain(model: str, backend: str, batch: int, threads: List[int], rounds: int = 10) -> None:
    """What batching buys the Detector itself: per-frame wall and CPU ms at batch 1 vs ``batch``,
    interleaved, medians (CPU time does not depend on what else runs on the box)."""
    sys.path.insert(0, HERE)
    import _common as C

    from hgad_edge.detector import Detector

    frames = C.test_frames(batch)
    print(f"\nDetector per frame, batch 1 vs {batch} (640x480 frames, {rounds} interleaved rounds, medians)")
    print("| threads | batch | wall ms / frame | CPU ms / frame | backbone | flow | preprocess | gmm | postprocess |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in threads:
        det = Detector(model, backend=backend, threads=n)
        res: Dict[int, tuple] = {b: ([], [], {}) for b in (1, batch)}
        for b in res:
            det.predict(frames[:b])
            det.predict(frames[:b])
        for rnd in range(rounds):
            for b in ((1, batch) if rnd % 2 == 0 else (batch, 1)):
                for _ in range(max(1, batch // b)):
                    t, c = time.perf_counter(), time.process_time()
                    rs = det.predict(frames[:b])
                    res[b][0].append((time.perf_counter() - t) * 1e3 / b)
                    res[b][1].append((time.process_time() - c) * 1e3 / b)
                    for k, v in rs[0].timings_ms.items():
                        res[b][2].setdefault(k, []).append(v)
        for b, (w, c, st) in res.items():
            m = {k: statistics.median(v) for k, v in st.items()}
            print(f"| {n} | {b} | {statistics.median(w):.1f} | {statistics.median(c):.1f} | {m['backbone']:.1f} | "
                  f"{m['flow']:.1f} | {m['preprocess']:.1f} | {m['gmm']:.1f} | {m['postprocess']:.1f} |", flush=True)
        det.close()


# ----------------------------------------------------------------------------- the parent


def _spawn(a, videos: List[str], threads: int, mode: str, out: str) -> subprocess.Popen:
    cores = [int(c) for c in a.cores.split(",")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", a.model, "--backend", a.backend,
           "--threads", str(threads), "--videos", ",".join(videos), "--mode", mode, "--out", out]
    return subprocess.Popen(cmd, env=env, preexec_fn=lambda: os.sched_setaffinity(0, cores))


def _run(a, videos: List[str], groups: List[List[str]], threads: int, mode: str, tmp: str) -> List[dict]:
    outs = [os.path.join(tmp, f"w{i}_{time.monotonic_ns()}.json") for i in range(len(groups))]
    procs = [_spawn(a, g, threads, mode, o) for g, o in zip(groups, outs)]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"worker failed (exit {p.returncode})")
    res = []
    for o in outs:
        with open(o, encoding="utf-8") as f:
            res.append(json.load(f))
    return res


def _aggregate(results: List[dict]) -> Dict[str, float]:
    """Scored FPS in the window where every process was scoring, and scored frames per CPU
    second in it (all processes; independent of what else runs on the box); latency medians
    over sources."""
    start = max(r["times"][0][0] for r in results)
    end = min(r["times"][-1][0] for r in results)
    n, cpu = 0, 0.0
    for r in results:
        inside = [c for t, c in r["times"] if start <= t <= end]
        n += len(inside)
        cpu += inside[-1] - inside[0] if inside else 0.0
    return {"fps": (n - 1) / (end - start) if end > start else float("nan"),
            "per_cpu_s": (n - len(results)) / cpu if cpu > 0 else float("nan"),
            "p50": statistics.median(x for r in results for x in r["lat_p50"]),
            "p99": statistics.median(x for r in results for x in r["lat_p99"]),
            "rss": sum(r["rss_mb"] for r in results), "batch": statistics.median(r["mean_batch"] for r in results),
            "window_s": end - start}


def _videos(tmp: str, k: int, frames: int, size: str) -> List[str]:
    import cv2

    sys.path.insert(0, HERE)
    import _common as C

    w, h = (int(x) for x in size.split("x"))
    out = []
    for i in range(k):
        path = os.path.join(tmp, f"cam{i}.avi")
        if not os.path.exists(path):
            writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (w, h))
            for f in C.test_frames(frames, height=h, width=w, seed=i):
                writer.write(f)
            writer.release()
        out.append(path)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="RUN_DIR exported to ONNX (default: the synthetic default model, built once "
                   "into --cache)")
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "hgad_edge_bench"))
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--k", default="1,2,4,8", help="numbers of sources")
    p.add_argument("--frames", type=int, default=100, help="frames per source")
    p.add_argument("--size", default="640x480", help="frame size of the synthetic camera videos (MJPG)")
    p.add_argument("--cores", default=",".join(str(c) for c in sorted(os.sched_getaffinity(0))),
                   help="CPU cores every worker is pinned to")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians are reported)")
    p.add_argument("--direct-k", default="4", help="K values whose Detector batch-K throughput is measured too")
    p.add_argument("--json", help="write the raw results here")
    p.add_argument("--batch-gain", action="store_true", help="also time the Detector itself at batch 1 vs the "
                   "largest K, per frame (wall and CPU), with 1 thread and with all cores")
    # worker mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    p.add_argument("--videos", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        import logging

        logging.basicConfig(level=logging.ERROR)
        res = _worker(a)
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(res, f)
        return 0

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the GMM kernel of --batch-gain, as in the workers
    sys.path.insert(0, HERE)
    import _common as C

    if not a.model:
        print(f"building / reusing the synthetic default model in {a.cache} …", file=sys.stderr, flush=True)
        a.model = C.model_dir(a.cache, **C.DEFAULTS)
    ks = [int(k) for k in a.k.split(",")]
    direct_ks = [int(k) for k in a.direct_k.split(",") if k]
    n_cores = len(a.cores.split(","))
    load0 = C.load_average()
    rows: Dict[tuple, List[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="hgad_multistream_") as tmp:
        videos = _videos(tmp, max(ks), a.frames, a.size)
        for rep in range(a.repeats):
            for k in ks:
                vs = videos[:k]
                plan = [("one process", [vs], n_cores, "stream"),
                        ("separate", [[v] for v in vs], max(1, n_cores // k), "stream")]
                if k in direct_ks:
                    plan.append(("Detector direct", [vs], n_cores, "direct"))
                for name, groups, threads, mode in (plan if rep % 2 == 0 else plan[::-1]):
                    res = _run(a, vs, groups, threads, mode, tmp)
                    if mode == "direct":
                        r = res[0]
                        agg = {"fps": r["frames"] / r["seconds"], "per_cpu_s": r["frames"] / r["cpu_s"],
                               "p50": statistics.median(r["call_ms"]),
                               "p99": sorted(r["call_ms"])[int(0.99 * (len(r["call_ms"]) - 1))],
                               "rss": r["rss_mb"], "batch": k, "window_s": r["seconds"]}
                    else:
                        agg = _aggregate(res)
                    agg["procs"], agg["threads"] = len(groups), threads
                    rows.setdefault((k, name), []).append(agg)
                    print(f"round {rep + 1}/{a.repeats} K={k} {name:<16} {agg['fps']:7.2f} FPS  "
                          f"{agg['per_cpu_s']:6.2f} frames/CPU-s  "
                          f"p50 {agg['p50']:7.1f} ms  p99 {agg['p99']:7.1f} ms  RSS {agg['rss']:7.0f} MB  "
                          f"(load {os.getloadavg()[0]:.2f})", flush=True)
    if rows:
        _table(a, ks, rows, load0, C)
    if a.batch_gain:
        os.sched_setaffinity(0, [int(c) for c in a.cores.split(",")])
        batch_gain(a.model, a.backend, max(ks), sorted({1, n_cores}))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({f"{k}|{n}": v for (k, n), v in rows.items()}, f, indent=1)
    return 0


def _table(a, ks, rows, load0, C) -> None:
    med = {key: {m: statistics.median(r[m] for r in v) for m in ("fps", "per_cpu_s", "p50", "p99", "rss", "batch")}
           | {"procs": v[0]["procs"], "threads": v[0]["threads"]} for key, v in rows.items()}
    load1 = C.load_average()
    print(f"\nCPU {C.cpu_model()}, cores {a.cores}, backend {a.backend}, model {a.model}")
    print(f"{a.frames} frames {a.size} MJPG per source, medians of {a.repeats} interleaved rounds; "
          f"load average {load0[0]:.2f} → {load1[0]:.2f}\n")
    print("| K | run | processes × threads | aggregate scored FPS | frames / CPU-s | latency p50 / p99 ms | "
          "mean batch | RSS MB | one process ÷ this (FPS, per CPU-s) |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for k in ks:
        one = med[(k, "one process")]
        for name in ("one process", "separate", "Detector direct"):
            m = med.get((k, name))
            if m is None:
                continue
            ratio = ("" if name == "one process"
                     else f"{one['fps'] / m['fps']:.2f}×, {one['per_cpu_s'] / m['per_cpu_s']:.2f}×")
            print(f"| {k} | {name} | {m['procs']} × {m['threads']} | {m['fps']:.2f} | {m['per_cpu_s']:.2f} | "
                  f"{m['p50']:.1f} / {m['p99']:.1f} | {m['batch']:.2f} | {m['rss']:.0f} | {ratio} |")
    print("\nper round (the runs of a round ran back to back), one process ÷ the other run:")
    for k in ks:
        for name in ("separate", "Detector direct"):
            if (k, name) not in rows:
                continue
            pairs = list(zip(rows[(k, "one process")], rows[(k, name)]))
            fps = [x["fps"] / y["fps"] for x, y in pairs]
            cpu = [x["per_cpu_s"] / y["per_cpu_s"] for x, y in pairs]
            print(f"  K={k} vs {name}: FPS {' '.join(f'{v:.2f}' for v in fps)} (median {statistics.median(fps):.2f}), "
                  f"per CPU-s {' '.join(f'{v:.2f}' for v in cpu)} (median {statistics.median(cpu):.2f})")


if __name__ == "__main__":
    sys.exit(main())
