"""Per-stage latency of one frame on every backend, batch 1 and 8, with the machine in the header.

Stages: decode (JPEG → BGR, what a camera/file source costs), preprocess, backbone, flow, gmm,
postprocess, total (their sum). Each is the median / p90 / p99 over ``--frames`` frames after
``--warmup`` calls; FPS is frames / wall time of the timed loop (decode included); peak RSS is
the process's. Every backend runs in its own process (separate thread pools, separate RSS).

Rows:
  torch           eager PyTorch, unfolded FrEIA flows, the native GMM kernel (``Detector``)
  onnxruntime     exported graphs (folded flows) on ONNX Runtime, the native GMM kernel
  official-style  eager PyTorch, unfolded flows, the official Gaussian-mixture formula over
                  every class, torchvision/scipy pre/postprocessing (benchmarks/_official.py)
  tensorrt        reported with the reason when it cannot run here

The roofline line: FLOPs per frame counted with torch's FlopCounterMode (backbone + flows) over
the measured SGEMM peak at the same thread count, as % of peak per backend.

    python benchmarks/latency.py                       # default synthetic 256² model, 2 threads
    python benchmarks/latency.py --frames 50 --json out.json
    python benchmarks/latency.py --model runs/demo --threads 1 --profile
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

THREADS = C.threads_from_argv(2)
if "--omp" in sys.argv[:-1]:  # the GMM kernel's OpenMP threads, apart from the backend's
    os.environ["OMP_NUM_THREADS"] = sys.argv[sys.argv.index("--omp") + 1]

import numpy as np  # noqa: E402

BACKENDS = ("torch", "onnxruntime", "official-style", "tensorrt")
# Extra rows that explain the shared box: (backend, threads override, OpenMP threads override).
VARIANTS = {"torch@1": ("torch", 1, None), "onnxruntime+gmm@1": ("onnxruntime", None, 1)}
PROFILE_RUNS = 60


# ----------------------------------------------------------------------------- one backend
def make_runner(name: str, model_dir: str, threads: int):
    """A callable frames → list of per-frame timing dicts."""
    if name == "official-style":
        from _official import OfficialStylePipeline

        pipe = OfficialStylePipeline(model_dir, threads)
        return pipe.predict
    from hgad_edge.detector import Detector

    det = Detector(model_dir, backend=name, threads=threads)

    def run(frames):
        return [dict(r.timings_ms) for r in det.predict(frames)]

    return run


def measure(name: str, model_dir: str, threads: int, frames: int = 200, warmup: int = 20,
            batches=(1, 8)) -> dict:
    """Stage statistics of ``name`` on ``model_dir``: {batch: {stage: stats}, fps, rss}."""
    import cv2

    t_load = time.perf_counter()
    run = make_runner(name, model_dir, threads)
    load_s = time.perf_counter() - t_load
    jpegs = C.encoded_frames(16)
    out = {"backend": name, "load_s": load_s, "batches": {}}
    for b in batches:
        calls = max(1, -(-frames // b))
        for i in range(max(1, warmup // b)):
            run([cv2.imdecode(jpegs[(i * b + j) % len(jpegs)], cv2.IMREAD_COLOR) for j in range(b)])
        per_stage = {k: [] for k in C.STAGES}
        wall = []
        t_loop = time.perf_counter()
        for i in range(calls):
            t0 = time.perf_counter()
            imgs, dec = [], []
            for j in range(b):
                d0 = time.perf_counter()
                imgs.append(cv2.imdecode(jpegs[(i * b + j) % len(jpegs)], cv2.IMREAD_COLOR))
                dec.append((time.perf_counter() - d0) * 1e3)
            timings = run(imgs)
            wall.append((time.perf_counter() - t0) * 1e3)
            for t, d in zip(timings, dec):
                t = dict(t)
                t["decode"] = d
                t["total"] = t.get("total", 0.0) + d
                for k in C.STAGES:
                    per_stage[k].append(t.get(k, 0.0))
        loop_s = time.perf_counter() - t_loop
        out["batches"][str(b)] = {"stages": {k: C.stats(v) for k, v in per_stage.items()},
                                  "call_ms": C.stats(wall), "frames": calls * b,
                                  "fps": calls * b / loop_s}
    out["peak_rss_mb"] = C.peak_rss_mb()
    out["load_average_end"] = [round(x, 2) for x in C.load_average()]
    return out


def measure_isolated(name: str, model_dir: str, threads: int, frames: int, warmup: int, batches) -> dict:
    """:func:`measure` in a fresh Python process (its own thread pools and RSS)."""
    backend, t_over, omp = VARIANTS.get(name, (name, None, None))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", backend, "--model", model_dir, "--threads",
           str(t_over or threads), "--frames", str(frames), "--warmup", str(warmup),
           "--batches", ",".join(map(str, batches))] + (["--omp", str(omp)] if omp else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"backend": name, "status": "failed", "reason": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["backend"] = name
    return out


# ----------------------------------------------------------------------------- ORT profile
def ort_profile(model_dir: str, threads: int, runs: int = PROFILE_RUNS) -> dict:
    """Per-op-type time of the ONNX Runtime graphs (``enable_profiling``), batch 1.

    Conv nodes are split into depthwise (group = channels) and dense (1×1 / stem) by reading the
    graph; the share of time is set against the share of counted FLOPs.
    """
    import onnx
    import onnxruntime as ort

    from hgad_edge.artifact import Artifact
    from hgad_edge.preprocess import preprocess

    art = Artifact.read(model_dir)
    files = art.exports["onnxruntime"]["files"]
    size = art.image_size
    batch = preprocess(C.test_frames(1), size)
    by_type: dict = {}
    workdir = tempfile.mkdtemp(prefix="ort_profile_")
    for key in ("backbone", "flows"):
        path = os.path.join(model_dir, files[key])
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(workdir, key)
        so.optimized_model_filepath = os.path.join(workdir, key + ".opt.onnx")
        sess = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        if key == "backbone":
            feeds = {"image": batch}
            feats = sess.run(None, feeds)
        else:
            feeds = dict(zip([i.name for i in sess.get_inputs()], feats))
        for _ in range(5):
            sess.run(None, feeds)
        for _ in range(runs):
            sess.run(None, feeds)
        prof = sess.end_profiling()
        opt = onnx.load(so.optimized_model_filepath)
        groups = {}
        for node in opt.graph.node:
            g = next((a.i for a in node.attribute if a.name == "group"), 1)
            groups[node.name] = g
        with open(prof, encoding="utf-8") as f:
            events = json.load(f)
        for ev in events:
            if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
                continue
            node = ev["name"][:-len("_kernel_time")]
            op = ev.get("args", {}).get("op_name", "?")
            if op in ("Conv", "FusedConv", "NchwcConv"):
                op = f"{op} depthwise" if groups.get(node, 1) > 1 else f"{op} dense"
            op = f"{key}: {op}"
            by_type[op] = by_type.get(op, 0.0) + ev["dur"] / 1e3 / (runs + 5)  # ms per run
    return {"ms_per_run": dict(sorted(by_type.items(), key=lambda kv: -kv[1])), "runs": runs + 5}


def conv_flops(model, image_size: int) -> dict:
    """Backbone FLOPs per frame split into depthwise and dense convolutions (forward hooks)."""
    import torch

    acc = {"depthwise": 0.0, "dense": 0.0}

    def hook(mod, inp, out):
        k = mod.weight.shape[2] * mod.weight.shape[3]
        f = 2.0 * out.numel() * (mod.in_channels // mod.groups) * k
        acc["depthwise" if mod.groups > 1 else "dense"] += f

    hs = [m.register_forward_hook(hook) for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model.extract_features(torch.zeros(1, 3, image_size, image_size))
    for h in hs:
        h.remove()
    return acc


def ort_thread_sweep(model_dir: str, runs: int = 30) -> dict:
    """Median / best ms of backbone.onnx and flows.onnx: 1 vs 2 threads, spinning on/off, ENABLE_ALL vs
    EXTENDED graph optimizations (the settings tried while chasing the SGEMM target)."""
    import onnxruntime as ort

    from hgad_edge.artifact import Artifact
    from hgad_edge.preprocess import preprocess

    art = Artifact.read(model_dir)
    files = art.exports["onnxruntime"]["files"]
    batch = preprocess(C.test_frames(1), art.image_size)
    out = {}
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}
    configs = [(1, "all", "0"), (1, "all", "1"), (2, "all", "0"), (2, "all", "1"), (2, "extended", "0")]
    for threads, lvl_name, spin in configs:
            lvl = levels[lvl_name]
            if True:
                so = ort.SessionOptions()
                so.graph_optimization_level = lvl
                so.intra_op_num_threads = threads
                so.add_session_config_entry("session.intra_op.allow_spinning", spin)
                bb = ort.InferenceSession(os.path.join(model_dir, files["backbone"]), so,
                                          providers=["CPUExecutionProvider"])
                fl = ort.InferenceSession(os.path.join(model_dir, files["flows"]), so,
                                          providers=["CPUExecutionProvider"])
                feats = bb.run(None, {"image": batch})
                ffeeds = dict(zip([i.name for i in fl.get_inputs()], feats))
                for _ in range(5):
                    bb.run(None, {"image": batch})
                    fl.run(None, ffeeds)
                tb, tf = [], []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    bb.run(None, {"image": batch})
                    t1 = time.perf_counter()
                    fl.run(None, ffeeds)
                    tf.append((time.perf_counter() - t1) * 1e3)
                    tb.append((t1 - t0) * 1e3)
                out[f"threads={threads} opt={lvl_name} spin={spin}"] = {
                    "backbone": C.stats(tb), "flow": C.stats(tf)}
    return out


# ----------------------------------------------------------------------------- report
def roofline(rows: list, flops: dict, sgemm: dict, batch: str = "1") -> list:
    """Per backend: GFLOP/s on backbone+flow FLOPs (own graph and the eager reference) and % peak.

    A shared box disturbs both the frames and the SGEMM runs, so medians are compared with the
    median SGEMM rate and the best frame with the best SGEMM rate (the peak).
    """
    peak, typical = sgemm["peak"], sgemm["median"]
    out = []
    for r in rows:
        b = r.get("batches", {}).get(batch)
        if not b:
            continue
        st = b["stages"]
        t = (st["backbone"]["median"] + st["flow"]["median"]) / 1e3
        t_min = (st["backbone"]["min"] + st["flow"]["min"]) / 1e3
        own = flops["backbone"] + (flops["flow_folded"] if r["backend"].startswith("onnxruntime") else flops["flow"])
        ref = flops["backbone"] + flops["flow"]
        out.append({"backend": r["backend"], "ms": t * 1e3, "ms_best": t_min * 1e3, "gflop_own": own / 1e9,
                    "gflops_own": own / t / 1e9, "gflops_best": own / t_min / 1e9,
                    "pct_peak": 100 * own / t / 1e9 / peak, "pct_median": 100 * own / t / 1e9 / typical,
                    "pct_peak_best": 100 * own / t_min / 1e9 / peak,
                    "pct_peak_ref_flops": 100 * ref / t_min / 1e9 / peak})
    return out


def stage_table(rows: list, batch: str) -> list:
    lines = [f"| backend (batch {batch}) | " + " | ".join(C.STAGES) + " | FPS | peak RSS MB |",
             "|---|" + "---:|" * (len(C.STAGES) + 2)]
    for r in rows:
        b = r.get("batches", {}).get(batch)
        if not b:
            if "batches" not in r:  # the worker failed or the backend cannot run here
                lines.append(f"| {r['backend']} | {r.get('status', 'failed')}: {r.get('reason', '')} |")
            continue
        cells = [f"{C.fmt(b['stages'][k]['median'])} / {C.fmt(b['stages'][k]['p90'], '.1f')} / "
                 f"{C.fmt(b['stages'][k]['p99'], '.1f')}" for k in C.STAGES]
        lines.append(f"| {r['backend']} | " + " | ".join(cells) + f" | {b['fps']:.1f} | {r['peak_rss_mb']:.0f} |")
    return lines


def ratio_table(rows: list, batch: str = "1") -> list:
    """Speed-up of each backend over the official-style row, per stage (median / median)."""
    ref = next((r for r in rows if r["backend"] == "official-style" and "batches" in r), None)
    if ref is None:
        return []
    lines = [f"| speed-up vs official-style (batch {batch}, medians) | " + " | ".join(C.STAGES[1:]) + " |",
             "|---|" + "---:|" * (len(C.STAGES) - 1)]
    for r in rows:
        if "batches" not in r or r is ref:
            continue
        cells = []
        for k in C.STAGES[1:]:
            a, b = ref["batches"][batch]["stages"][k]["median"], r["batches"][batch]["stages"][k]["median"]
            cells.append(f"{a / b:.1f}×" if b > 0 else "-")
        lines.append(f"| {r['backend']} | " + " | ".join(cells) + " |")
    return lines


def report(res: dict) -> str:
    m = res["machine"]
    cfg = res["model"]
    lines = ["### Machine", ""] + C.machine_lines(m) + [
        f"- load average (1/5/15 min) at the end: {' / '.join(map(str, res['load_average_end']))}",
        "", f"### Per-stage latency — {cfg}", "",
        f"ms per frame, median / p90 / p99 over {res['frames']} frames after {res['warmup']} warm-up frames "
        "(batch 8: per-frame share of each call). total = decode + the Detector's stages.", ""]
    for b in res["batches"]:
        lines += stage_table(res["rows"], str(b)) + [""]
    lines += ratio_table(res["rows"], "1") + [""]
    if res.get("tensorrt"):
        lines += [f"tensorrt: not available here — {res['tensorrt']}", ""]
    fl, pk = res["flops"], res["sgemm"]
    peaks = ", ".join(f"{r['peak']:.1f}" for r in res.get("sgemm_runs", [pk]))
    lines += ["### Roofline (batch 1)", "",
              f"Counted FLOPs per frame (FlopCounterMode, GEMM/conv multiply-adds × 2): backbone "
              f"{fl['backbone'] / 1e9:.3f} G (depthwise convs {res['conv_split']['depthwise'] / 1e9:.3f} G, dense "
              f"{res['conv_split']['dense'] / 1e9:.3f} G), eager flows {fl['flow'] / 1e9:.3f} G, folded flows (ONNX) "
              f"{fl['flow_folded'] / 1e9:.3f} G.",
              f"Measured SGEMM at {m['threads']} threads (n³ float32, n = {pk['n']}, {pk['reps']} runs each; best / "
              "median GFLOP/s at the better n): " + ", ".join(f"{k} {pk[k]:.1f} / {pk[k + '_median']:.1f} (n = "
                                                             f"{pk[k + '_n']})" for k in pk["libraries"])
              + f" → **peak {pk['peak']:.1f} GFLOP/s** (best run), "
              f"{pk['median']:.1f} GFLOP/s typical under this load (median run); measured before and after the "
              f"frames, the better kept (peaks {peaks}).",
              "",
              "Best frame vs peak is the roofline number (both the least disturbed runs); median frame vs "
              "median SGEMM is the same ratio under the box's typical load.", "",
              "| backend | backbone+flow ms median / best | GFLOP executed | GFLOP/s median / best "
              "| **% of peak (best/peak)** | % (median/median SGEMM) | % on eager-graph FLOPs (best/peak) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in res["roofline"]:
        lines.append(f"| {r['backend']} | {r['ms']:.2f} / {r['ms_best']:.2f} | {r['gflop_own']:.3f} | "
                     f"{r['gflops_own']:.1f} / {r['gflops_best']:.1f} | **{r['pct_peak_best']:.1f} %** | "
                     f"{r['pct_median']:.1f} % | {r['pct_peak_ref_flops']:.1f} % |")
    if res.get("profile"):
        lines += ["", "### ONNX Runtime profile (batch 1, ms per run by op type)", "",
                  "| op | ms | share |", "|---|---:|---:|"]
        prof = res["profile"]["ms_per_run"]
        tot = sum(prof.values()) or 1.0
        for op, ms in list(prof.items())[:14]:
            lines.append(f"| {op} | {ms:.2f} | {100 * ms / tot:.0f} % |")
        cs = res["conv_split"]
        rates = []
        def ms_of(prefix: str, words, suffix: str = "") -> float:
            return sum(v for k, v in prof.items() if k.startswith(prefix) and any(w in k for w in words)
                       and k.endswith(suffix))

        for label, ms, gf in (("dense convolutions", ms_of("backbone:", ("Conv",), "dense"), cs["dense"]),
                              ("depthwise convolutions", ms_of("backbone:", ("Conv",), "depthwise"), cs["depthwise"]),
                              ("flow MatMul/Gemm", ms_of("flows:", ("MatMul", "Gemm")), fl["flow_folded"])):
            if ms > 0:
                rates.append(f"{label} {gf / 1e9:.3f} GFLOP in {ms:.2f} ms = {gf / ms / 1e6:.1f} GFLOP/s "
                             f"({100 * gf / ms / 1e6 / pk['peak']:.0f} % of peak)")
        shapes = res.get("flow_shapes", [])
        lines += ["", "Rates inside the profile (profiling adds per-op overhead): " + "; ".join(rates) + ".", "",
                  "What keeps the network from the SGEMM rate: the depthwise 3×3/5×5 convolutions (about 10 % of "
                  "the FLOPs, few FLOPs per byte moved: memory-bound), the flows' small matmuls (rows = positions "
                  f"per level, {' / '.join(str(n) for n, _ in shapes)}, inner dimension "
                  f"{' / '.join(str(k) for _, k in shapes)}: too small to fill the SGEMM kernel's "
                  "tiles on two threads), and the flows' elementwise ops between them (Add / Split / Mul / Concat / "
                  "Tanh / Exp). The dense (1×1 and stem) convolutions run close to the SGEMM rate."]
    if res.get("sweep"):
        lines += ["", "### What was tried: ONNX Runtime settings (batch 1, median / best ms)", "",
                  "| setting | backbone | flows |", "|---|---:|---:|"]
        for k, v in res["sweep"].items():
            lines.append(f"| {k} | {v['backbone']['median']:.2f} / {v['backbone']['min']:.2f} | "
                         f"{v['flow']['median']:.2f} / {v['flow']['min']:.2f} |")
    return "\n".join(lines)


def run(model: str, threads: int, frames: int, warmup: int, batches, backends, profile: bool,
        cache: str) -> dict:
    """The whole latency benchmark; returns the JSON-able result (``report`` formats it)."""
    import torch

    from hgad_edge.artifact import Artifact

    torch.set_num_threads(threads)
    if model is None:
        model = C.model_dir(cache, **C.DEFAULTS)
    art = Artifact.read(model)
    mc = art.model_config.to_dict()
    res = {"machine": C.machine(threads), "model_dir": model, "frames": frames, "warmup": warmup,
           "batches": list(batches),
           "model": f"{mc['image_size']}², {len(mc['class_names'])} classes, K = {mc['n_intra']}, "
                    f"{mc['coupling_blocks']} coupling blocks, {mc['backbone']}, {threads} threads"}
    res["sgemm"] = C.sgemm_peak(threads)
    from hgad_edge.runtime.eager import load_model

    net = load_model(art)
    res["flops"] = C.count_flops(net, int(mc["image_size"]))
    res["flow_shapes"] = [[h * w, d // 2] for (h, w), d in zip(net.feature_shapes, net.dims)]  # rows, inner dim
    res["conv_split"] = conv_flops(net, int(mc["image_size"]))
    del net
    rows = []
    for name in backends:
        if name == "tensorrt":
            res["tensorrt"] = C.tensorrt_status()
            if res["tensorrt"]:
                continue
        if name == "onnxruntime" and "onnxruntime" not in art.usable_exports():
            rows.append({"backend": name, "status": "not available here",
                         "reason": f"no ONNX export: hgad-edge export {model} --format onnx"})
            continue
        print(f"  measuring {name} …", file=sys.stderr, flush=True)
        if name in VARIANTS:  # explanatory rows: batch 1, at most 100 frames (keeps run_all under 10 min)
            rows.append(measure_isolated(name, model, threads, min(frames, 100), warmup, [1]))
        else:
            rows.append(measure_isolated(name, model, threads, frames, warmup, batches))
    res["rows"] = rows
    # the box is shared: measure the SGEMM peak again after the frames and keep the better run
    again = C.sgemm_peak(threads)
    res["sgemm_runs"] = [dict(res["sgemm"]), again]
    if again["peak"] > res["sgemm"]["peak"]:
        res["sgemm"] = again
    res["roofline"] = roofline(rows, res["flops"], res["sgemm"])
    if profile and "onnxruntime" in art.usable_exports():
        print("  ONNX Runtime profile …", file=sys.stderr, flush=True)
        res["profile"] = ort_profile(model, threads)
        res["sweep"] = ort_thread_sweep(model)
    res["load_average_end"] = [round(x, 2) for x in C.load_average()]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory (default: a synthetic default model in --cache)")
    ap.add_argument("--threads", type=int, default=2, help="threads of every library (default 2)")
    ap.add_argument("--frames", type=int, default=200, help="timed frames per backend and batch size (default 200)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed frames first (default 20)")
    ap.add_argument("--batches", default="1,8", help="batch sizes, comma-separated (default 1,8)")
    ap.add_argument("--backends", default=",".join(BACKENDS), help=f"subset of {','.join(BACKENDS)}")
    ap.add_argument("--profile", action="store_true", help="add the ONNX Runtime per-op profile and settings sweep")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "hgad_edge_bench"),
                    help="where synthetic models are built and reused")
    ap.add_argument("--json", default=None, help="write the results as JSON here")
    ap.add_argument("--variants", action="store_true",
                    help="add rows torch@1 (eager torch on 1 thread) and onnxruntime+gmm@1 (GMM kernel on 1 "
                         "OpenMP thread): on a loaded machine they show what thread contention costs")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--omp", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    batches = [int(x) for x in a.batches.split(",") if x]
    if a.worker:
        print(json.dumps(measure(a.worker, a.model, a.threads, a.frames, a.warmup, batches)))
        return 0
    backends = C.backend_list(a.backends, list(BACKENDS) + list(VARIANTS))
    if a.variants:
        backends += [v for v in VARIANTS if v not in backends]
    res = run(a.model, a.threads, a.frames, a.warmup, batches, backends, a.profile, a.cache)
    print(report(res))
    C.write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
