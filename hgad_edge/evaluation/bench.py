"""``hgad-edge bench``: one row per backend × precision, in the style of Ultralytics' benchmark.

Each row: status (passed / exported but failed validation or its accuracy gate / failed / not
available here, with the reason), artifact size, image and pixel AUROC on the test split (class
given), the accuracy-gate drop recorded at export (synthetic defects, reduced precisions), the
largest anomaly-map difference to the torch reference, end-to-end latency at batch 1 (decoded
frame in → ``Result`` out) as p50 / p99 over ``frames`` timed frames after ``warmup``, FPS, and
the peak resident memory of a process that loads that variant and scores with it.

Peak RSS is measured in a spawned process of its own per row (it starts from nothing, loads
that variant and scores 20 frames), so one row's memory does not count for the next.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from hgad_edge import artifact, data
from hgad_edge.artifact import Artifact
from hgad_edge.runtime import resolve_device

log = logging.getLogger(__name__)

PASSED, FAILED_VALIDATION, FAILED, UNAVAILABLE = ("passed", "exported but failed validation", "failed",
                                                  "not available here")
# Validation against the torch row: image AUROC equal to 3 decimals for fp32 (the parity
# requirement), looser for reduced precision; anomaly maps within MAP_TOL of the map's range.
# A reduced precision with its own calibration is judged by its accuracy gate at export instead
# (README "Precision tiers"); these apply to the rows without one (TensorRT engines).
AUROC_TOL = {"fp32": 5e-4, "fp16": 1e-2, "bf16": 2e-2, "int8": 5e-2}
MAP_TOL = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 2e-2, "int8": 5e-2}
STAGES = ("preprocess", "backbone", "flow", "gmm", "postprocess", "total")
ROWS = (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("onnxruntime", "bf16"),
        ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"),
        ("tensorrt", "fp32"), ("tensorrt", "fp16"), ("tensorrt", "int8"))
_FORMAT = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt"}


@dataclass
class BenchRow:
    backend: str
    precision: str
    status: str = FAILED
    reason: str = ""
    size_mb: float = float("nan")
    image_auroc: float = float("nan")
    pixel_auroc: float = float("nan")
    gate_drop: float = float("nan")
    map_err: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    fps: float = float("nan")
    peak_rss_mb: float = float("nan")
    stages_ms: Dict[str, float] = field(default_factory=dict)


def _size_mb(run_dir: str, names: Sequence[str]) -> float:
    return sum(os.path.getsize(os.path.join(run_dir, n)) for n in dict.fromkeys(names)) / 2**20


def variant_files(art: Artifact, backend: str, precision: str) -> List[str]:
    """The files a variant loads (what it costs on disk): graphs, IR weights, engines."""
    if backend == "torch":
        return [artifact.WEIGHTS, artifact.BACKBONE]
    sec = art.variant(backend, precision) or {}
    if backend == "tensorrt":
        return [sec["file"]] if "file" in sec else []
    files = sec.get("files", {})
    return [f for k, f in files.items() if k != "model"]  # the split sessions load backbone + flows


def _candidates(art: Artifact) -> List[tuple]:
    """(backend, precision, files, reason-if-unavailable) for every row of the table."""
    rows = []
    variants = art.variants()
    for backend, precision in ROWS:
        if backend == "torch" or (backend, precision) in variants:
            rows.append((backend, precision, variant_files(art, backend, precision), ""))
        elif backend == "tensorrt":
            rows.append((backend, precision, [], f"no engine: hgad-edge export RUN_DIR --format tensorrt "
                                                 f"--precision {precision}"))
        else:
            rows.append((backend, precision, [], f"not exported: hgad-edge export RUN_DIR --format "
                                                 f"{_FORMAT[backend]} --precision {precision}"))
    return rows


def _unavailable_reason(backend: str, device: str, precision: str = "fp32") -> str:
    """Why a backend cannot run here ('' when it can)."""
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime not installed (pip install onnxruntime)"
        if precision == "bf16":
            from hgad_edge.runtime.ort import bf16_fastmath_supported

            if not bf16_fastmath_supported():
                return "ONNX Runtime's CPU EP has bf16 kernels on aarch64 only (use openvino bf16 on x86)"
    if backend == "openvino":
        try:
            import openvino  # noqa: F401
        except ImportError:
            return "openvino not installed: pip install hgad_edge[openvino]"
    if backend == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "tensorrt not installed: pip install hgad_edge[tensorrt] on an NVIDIA GPU"
        if not device.startswith("cuda"):
            return "TensorRT runs on a GPU: pass --device cuda"
    return ""


def time_frames(det, frames: Sequence[np.ndarray], n: int, warmup: int) -> tuple:
    """Latency (ms) of ``n`` single-frame calls after ``warmup``; and the median stage split."""
    for i in range(warmup):
        det(frames[i % len(frames)])
    lat, stages = [], {k: [] for k in STAGES}
    for i in range(n):
        frame = frames[i % len(frames)]
        t0 = time.perf_counter()
        r = det(frame)
        lat.append((time.perf_counter() - t0) * 1e3)
        for k in STAGES:
            stages[k].append(r.timings_ms.get(k, 0.0))
    return np.array(lat), {k: float(np.median(v)) for k, v in stages.items()}


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB).

    Linux: ``VmHWM`` of ``/proc/self/status`` — not ``getrusage``'s ``ru_maxrss``, which survives
    ``exec`` and so reports a spawned child's parent's peak when that was larger."""
    import resource
    import sys

    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB elsewhere


def _rss_worker(run_dir: str, backend: str, precision: Optional[str], device: str, threads: Optional[int],
                paths: Sequence[str], frames: int, out_path: str) -> None:
    """In a fresh process: load the variant, score ``frames`` batch-1 frames, write the peak RSS."""
    from hgad_edge import fileio
    from hgad_edge.detector import Detector

    out: Dict[str, object] = {}
    try:
        images = [data.read_image(p) for p in paths]
        with Detector(run_dir, backend=backend, device=device, threads=threads, precision=precision) as det:
            for i in range(frames):
                det(images[i % len(images)])
    except (ImportError, RuntimeError, ValueError, OSError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    out["peak_rss_mb"] = peak_rss_mb()
    fileio.write_json(out_path, out)


def measure_peak_rss(run_dir: str, backend: str, precision: Optional[str], device: str, threads: Optional[int],
                     paths: Sequence[str], frames: int = 20, timeout_s: float = 600.0) -> float:
    """Peak RSS (MiB) of a fresh (spawned) process that loads ``backend`` at ``precision`` and
    scores ``frames`` frames read from ``paths``: what a deployment of that tier costs, imports
    included. NaN (logged) when that process could not run it."""
    with tempfile.TemporaryDirectory(prefix="hgad_rss_") as tmp:
        out_path = os.path.join(tmp, "rss.json")
        proc = multiprocessing.get_context("spawn").Process(
            target=_rss_worker, args=(run_dir, backend, precision, device, threads, list(paths), frames, out_path))
        proc.start()
        proc.join(timeout_s)
        if proc.is_alive():
            proc.terminate()
            proc.join()
        if not os.path.isfile(out_path):
            log.warning("peak RSS of %s %s: the measuring process died (exit code %s)", backend, precision,
                        proc.exitcode)
            return float("nan")
        with open(out_path, encoding="utf-8") as f:
            out = json.load(f)
    if "error" in out:
        log.info("peak RSS of %s %s not measured: %s", backend, precision, out["error"])
        return float("nan")
    return float(out["peak_rss_mb"])


def check_bench_args(frames: int, warmup: int, threads: Optional[int]) -> None:
    """Refuse timing settings that cannot give a latency (``ValueError`` naming the flag)."""
    if frames < 1:
        raise ValueError(f"--frames must be >= 1 (timed frames per row), got {frames}")
    if warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {warmup}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")


def run_bench(run_dir: str, data_root: str, device: str = "auto", threads: Optional[int] = 2, frames: int = 100,
              warmup: int = 10, map_images: int = 8, progress: bool = False, rss: bool = False) -> List[BenchRow]:
    """Benchmark every backend × precision of ``run_dir`` on the test split of ``data_root``
    (``rss``: also each row's peak RSS, in a spawned process of its own — a few seconds a row;
    ``hgad-edge bench`` does it unless ``--no-rss``)."""
    from hgad_edge.detector import Detector
    from hgad_edge.evaluation.evaluator import evaluate

    check_bench_args(frames, warmup, threads)
    device = resolve_device(device)
    art = Artifact.read(run_dir)
    samples = data.test_samples(data_root, art.class_names)
    if not samples:
        raise ValueError(f"no test images under {data_root} for the classes of {run_dir}")
    paths = [s.path for s in samples[:max(map_images, 1)]]
    images = [data.read_image(p) for p in paths]
    ref_maps: Optional[List[np.ndarray]] = None
    ref_auroc = float("nan")
    rows = []
    skipped = art.skipped_exports()
    skipped_v = art.skipped_variants()
    for backend, precision, files, missing in _candidates(art):
        row = BenchRow(backend, precision)
        rows.append(row)
        sec = art.variant(backend, precision) or {}
        row.gate_drop = float((sec.get("accuracy_gate") or {}).get("drop", float("nan")))
        if backend in skipped or (backend, precision) in skipped_v:  # exported, but failed: never loaded
            row.status = FAILED_VALIDATION
            row.reason = skipped.get(backend) or skipped_v[(backend, precision)]
            row.size_mb = _size_mb(run_dir, files) if files else float("nan")
            continue
        reason = _unavailable_reason(backend, device, precision) or missing
        if reason:
            row.status, row.reason = UNAVAILABLE, reason
            continue
        row.size_mb = _size_mb(run_dir, files)
        # torch runs on the bench's device too (CPU or GPU); OpenVINO on the CPU
        row_device = "cpu" if backend == "openvino" else device
        try:
            with Detector(run_dir, backend=backend, device=row_device, threads=threads, precision=precision) as det:
                report = evaluate(run_dir, data_root, detector=det, progress=progress)
                row.image_auroc = float(report["mean"]["known"]["image_auroc"])
                row.pixel_auroc = float(report["mean"]["known"]["pixel_auroc"])
                maps = [det(f).anomaly_map for f in images]
                lat, row.stages_ms = time_frames(det, images, frames, warmup)
        except (ImportError, RuntimeError, ValueError, OSError) as e:
            row.status, row.reason = FAILED, f"{type(e).__name__}: {e}"
            log.warning("bench %s %s failed: %s", backend, precision, e)
            continue
        if rss:
            row.peak_rss_mb = measure_peak_rss(run_dir, backend, precision, row_device, threads, paths)
        row.p50_ms, row.p99_ms = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
        row.fps = 1e3 / row.p50_ms
        row.status = PASSED
        if backend == "torch":
            ref_maps, ref_auroc = maps, row.image_auroc
            row.map_err = 0.0
            continue
        if ref_maps is not None:
            row.map_err = max(float(np.abs(a - b).max()) / max(float(b.max() - b.min()), 1e-12)
                              for a, b in zip(maps, ref_maps))
            if sec.get("accuracy_gate"):
                # its own calibration puts its maps on their own scale: judged by its gate at export
                # (the gate drop column), not by parity with the fp32 torch maps
                continue
            bad = []
            if row.map_err > MAP_TOL[precision]:
                bad.append(f"map error {row.map_err:.1e} > {MAP_TOL[precision]:.0e}")
            if abs(row.image_auroc - ref_auroc) > AUROC_TOL[precision]:
                bad.append(f"image AUROC {row.image_auroc:.3f} vs torch {ref_auroc:.3f}")
            if bad:
                row.status, row.reason = FAILED_VALIDATION, "; ".join(bad)
        else:  # no torch row ran (e.g. torch without CUDA on --device cuda): say it was not compared
            row.reason = "not compared: the torch reference row did not run"
    return rows


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt(v: float, spec: str) -> str:
    return "-" if v != v else format(v, spec)  # NaN → "-"


def format_table(rows: Sequence[BenchRow], threads: Optional[int] = None) -> str:
    """The benchmark table (markdown), then the per-stage split of the rows that ran."""
    head = ("| backend | precision | status | size MB | img AUROC | pix AUROC | gate drop | map err | p50 ms | p99 ms "
            "| FPS | peak RSS MB |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        status = r.status + (f" ({r.reason})" if r.reason else "")
        lines.append(f"| {r.backend} | {r.precision} | {status} | {_fmt(r.size_mb, '.1f')} | "
                     f"{_fmt(r.image_auroc, '.3f')} | {_fmt(r.pixel_auroc, '.3f')} | {_fmt(r.gate_drop, '+.4f')} | "
                     f"{_fmt(r.map_err, '.1e')} | {_fmt(r.p50_ms, '.2f')} | {_fmt(r.p99_ms, '.2f')} | "
                     f"{_fmt(r.fps, '.1f')} | {_fmt(r.peak_rss_mb, '.0f')} |")
    ran = [r for r in rows if r.stages_ms]
    if ran:
        lines += ["", "| backend | precision | " + " | ".join(STAGES) + " |",
                  "|---|---|" + "---:|" * len(STAGES)]
        for r in ran:
            lines.append(f"| {r.backend} | {r.precision} | " + " | ".join(f"{r.stages_ms[k]:.2f}" for k in STAGES)
                         + " |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines.append(f"\n{cpu_name()}, {os.cpu_count()} CPUs, threads={threads}, "
                 f"load average {load:.2f}; latency = one decoded frame → Result, batch 1, median stages in ms; "
                 "gate drop = synthetic-defect AUROC drop vs fp32 recorded at export; peak RSS = the row's own process")
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[BenchRow]) -> List[dict]:
    return [asdict(r) for r in rows]
