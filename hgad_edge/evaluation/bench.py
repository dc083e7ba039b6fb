"""``hgad-edge bench``: one row per backend × precision, in the style of Ultralytics' benchmark.

Each row: status (passed / exported but failed validation / failed / not available here, with
the reason), artifact size, image and pixel AUROC on the test split (class given), the largest
anomaly-map difference to the torch reference, and end-to-end latency at batch 1 (decoded frame
in → ``Result`` out) as p50 / p99 over ``frames`` timed frames after ``warmup``, and FPS.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from hgad_edge import artifact, data
from hgad_edge.artifact import Artifact
from hgad_edge.detector import Detector
from hgad_edge.evaluation.evaluator import evaluate
from hgad_edge.runtime import resolve_device

log = logging.getLogger(__name__)

PASSED, FAILED_VALIDATION, FAILED, UNAVAILABLE = ("passed", "exported but failed validation", "failed",
                                                  "not available here")
# Validation against the torch row: image AUROC equal to 3 decimals for fp32 (the parity
# requirement), looser for reduced precision; anomaly maps within MAP_TOL of the map's range.
AUROC_TOL = {"fp32": 5e-4, "fp16": 1e-2, "int8": 5e-2}
MAP_TOL = {"fp32": 1e-4, "fp16": 1e-2, "int8": 5e-2}
STAGES = ("preprocess", "backbone", "flow", "gmm", "postprocess", "total")


@dataclass
class BenchRow:
    backend: str
    precision: str
    status: str = FAILED
    reason: str = ""
    size_mb: float = float("nan")
    image_auroc: float = float("nan")
    pixel_auroc: float = float("nan")
    map_err: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    fps: float = float("nan")
    stages_ms: Dict[str, float] = field(default_factory=dict)


def _size_mb(run_dir: str, names: Sequence[str]) -> float:
    return sum(os.path.getsize(os.path.join(run_dir, n)) for n in names) / 2**20


def _candidates(art: Artifact) -> List[tuple]:
    """(backend, precision, files, reason-if-unavailable) for every row of the table."""
    rows = [("torch", "fp32", [artifact.WEIGHTS, artifact.BACKBONE], "")]
    ort = art.exports.get("onnxruntime")
    if ort:
        files = [ort["files"]["backbone"], ort["files"]["flows"]]
        rows.append(("onnxruntime", "fp32", files, ""))
    else:
        rows.append(("onnxruntime", "fp32", [], f"not exported: hgad-edge export {art.run_dir} --format onnx"))
    engines = art.usable_exports().get("tensorrt", {}).get("engines", {})
    for p in ("fp32", "fp16", "int8"):
        if p in engines:
            rows.append(("tensorrt", p, [engines[p]["file"]], ""))
        else:
            rows.append(("tensorrt", p, [], f"no engine: hgad-edge export RUN_DIR --format tensorrt --precision {p}"))
    return rows


def _unavailable_reason(backend: str, device: str) -> str:
    """Why a backend cannot run here ('' when it can)."""
    if backend == "onnxruntime":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime not installed (pip install onnxruntime)"
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


def run_bench(run_dir: str, data_root: str, device: str = "auto", threads: Optional[int] = 2, frames: int = 100,
              warmup: int = 10, map_images: int = 8, progress: bool = False) -> List[BenchRow]:
    """Benchmark every backend × precision of ``run_dir`` on the test split of ``data_root``."""
    device = resolve_device(device)
    art = Artifact.read(run_dir)
    samples = data.test_samples(data_root, art.class_names)
    if not samples:
        raise ValueError(f"no test images under {data_root} for the classes of {run_dir}")
    images = [data.read_image(s.path) for s in samples[:max(map_images, 1)]]
    ref_maps: Optional[List[np.ndarray]] = None
    ref_auroc = float("nan")
    rows = []
    skipped = art.skipped_exports()
    for backend, precision, files, missing in _candidates(art):
        row = BenchRow(backend, precision)
        rows.append(row)
        if backend in skipped:  # exported, but its validation failed: never loaded
            row.status, row.reason = FAILED_VALIDATION, skipped[backend]
            continue
        reason = _unavailable_reason(backend, device) or missing
        if reason:
            row.status, row.reason = UNAVAILABLE, reason
            continue
        row.size_mb = _size_mb(run_dir, files)
        try:
            # torch runs on the bench's device too (CPU or GPU); engines have their own precision
            with Detector(run_dir, backend=backend, device=device, threads=threads,
                          precision=precision if backend == "tensorrt" else None) as det:
                report = evaluate(run_dir, data_root, detector=det, progress=progress)
                row.image_auroc = float(report["mean"]["known"]["image_auroc"])
                row.pixel_auroc = float(report["mean"]["known"]["pixel_auroc"])
                maps = [det(f).anomaly_map for f in images]
                lat, row.stages_ms = time_frames(det, images, frames, warmup)
        except (ImportError, RuntimeError, ValueError, OSError) as e:
            row.status, row.reason = FAILED, f"{type(e).__name__}: {e}"
            log.warning("bench %s %s failed: %s", backend, precision, e)
            continue
        row.p50_ms, row.p99_ms = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
        row.fps = 1e3 / row.p50_ms
        if backend == "torch":
            ref_maps, ref_auroc = maps, row.image_auroc
            row.map_err = 0.0
            row.status = PASSED
            continue
        row.status = PASSED
        if ref_maps is not None:
            row.map_err = max(float(np.abs(a - b).max()) / max(float(b.max() - b.min()), 1e-12)
                              for a, b in zip(maps, ref_maps))
            bad = []
            if row.map_err > MAP_TOL[precision]:
                bad.append(f"map error {row.map_err:.1e} > {MAP_TOL[precision]:.0e}")
            if abs(row.image_auroc - ref_auroc) > AUROC_TOL[precision]:
                bad.append(f"image AUROC {row.image_auroc:.3f} vs torch {ref_auroc:.3f}")
            if bad:
                row.status, row.reason = FAILED_VALIDATION, "; ".join(bad)
    return rows


def _fmt(v: float, spec: str) -> str:
    return "-" if v != v else format(v, spec)  # NaN → "-"


def format_table(rows: Sequence[BenchRow], threads: Optional[int] = None) -> str:
    """The benchmark table (markdown), then the per-stage split of the rows that ran."""
    head = ("| backend | precision | status | size MB | img AUROC | pix AUROC | map err | p50 ms | p99 ms | FPS |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        status = r.status + (f" ({r.reason})" if r.reason else "")
        lines.append(f"| {r.backend} | {r.precision} | {status} | {_fmt(r.size_mb, '.1f')} | "
                     f"{_fmt(r.image_auroc, '.3f')} | {_fmt(r.pixel_auroc, '.3f')} | {_fmt(r.map_err, '.1e')} | "
                     f"{_fmt(r.p50_ms, '.2f')} | {_fmt(r.p99_ms, '.2f')} | {_fmt(r.fps, '.1f')} |")
    ran = [r for r in rows if r.stages_ms]
    if ran:
        lines += ["", "| backend | precision | " + " | ".join(STAGES) + " |",
                  "|---|---|" + "---:|" * len(STAGES)]
        for r in ran:
            lines.append(f"| {r.backend} | {r.precision} | " + " | ".join(f"{r.stages_ms[k]:.2f}" for k in STAGES)
                         + " |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines.append(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, threads={threads}, "
                 f"load average {load:.2f}; latency = one decoded frame → Result, batch 1, median stages in ms")
    return "\n".join(lines)


def rows_as_dicts(rows: Sequence[BenchRow]) -> List[dict]:
    return [asdict(r) for r in rows]
