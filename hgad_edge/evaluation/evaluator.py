"""Evaluation on the test split: per class and mean image AUROC, pixel AUROC, AUPRO, routing.

Modes: "known" (class given) and "auto" (class routed per image). With ``full=True`` also the
official transductive normalisation (maxima over the *test set*, for comparison only) and every
way of combining the log-likelihood and entropy maps.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from hgad_edge import data
from hgad_edge.calibrate import fit_normalizer
from hgad_edge.detector import Detector
from hgad_edge.evaluation.metrics import auroc, aupro
from hgad_edge.postprocess import COMBINE_MODES, Normalizer, score_map
from hgad_edge.postprocess import FrameRaw

log = logging.getLogger(__name__)
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def class_metrics(raws: Sequence[FrameRaw], masks: Sequence[np.ndarray], labels: np.ndarray,
                  norm_of: Callable[[int], Normalizer], size: int, combine: str) -> Dict[str, float]:
    """Image AUROC (map maximum), pixel AUROC and AUPRO of frames scored with ``norm_of(class)``."""
    maps, scores = [], []
    for raw, mask in zip(raws, masks):
        amap, score = score_map(raw, norm_of(raw.class_index), size, combine, mask.shape)
        scores.append(score)
        maps.append(amap)
    return {"image_auroc": auroc(labels, np.array(scores)),
            "pixel_auroc": auroc(np.stack(masks), np.stack(maps)),
            "aupro": aupro(masks, maps)}


def _mean(rows: List[Dict[str, float]], key: str) -> float:
    vals = [r[key] for r in rows if not np.isnan(r[key])]
    return float(np.mean(vals)) if vals else float("nan")


def evaluate(model_dir: str, data_root: str, classes: Optional[Sequence[str]] = None, backend: str = "torch",
             batch_size: int = 8, full: bool = False, progress: bool = True,
             detector: Optional[Detector] = None, device: str = "auto",
             precision: Optional[str] = None) -> Dict[str, object]:
    """Score every test image of ``classes`` (default: all the model knows) and compute metrics.

    ``detector``: score with this one (left open); else one is made from ``backend``/``device``/
    ``precision`` and closed at the end.

    Returns a JSON-friendly dict: ``{"classes": {name: {mode: {metric: value}, "routing_accuracy"}},
    "mean": {...}, "backend": ...}``.
    """
    if detector is not None:
        return _evaluate(detector, data_root, classes, batch_size, full, progress)
    with Detector(model_dir, backend=backend, device=device, precision=precision) as det:
        return _evaluate(det, data_root, classes, batch_size, full, progress)


def _evaluate(det: Detector, data_root: str, classes: Optional[Sequence[str]], batch_size: int, full: bool,
              progress: bool) -> Dict[str, object]:
    names = list(classes) if classes else det.class_names
    for n in names:
        det.class_index(n)  # clear error for a class the model does not know
    samples = [s for s in data.test_samples(data_root, det.class_names) if s.class_name in names]
    if not samples:
        raise ValueError(f"no test images under {data_root} for classes {names}")
    per: Dict[str, Dict[str, list]] = {n: {"known": [], "auto": [], "masks": [], "labels": []} for n in names}
    for i in tqdm(range(0, len(samples), batch_size), desc="eval", disable=not progress):
        chunk = samples[i:i + batch_size]
        frames = [data.read_image(s.path) for s in chunk]
        levels, _ = det.scorer.forward(frames)
        for j, (s, frame) in enumerate(zip(chunk, frames)):
            p = per[s.class_name]
            p["known"].append(det.scorer.score(levels, j, s.class_index))
            p["auto"].append(det.scorer.score(levels, j, None))
            p["masks"].append(data.read_mask(s.mask_path, frame.shape[:2]) if s.is_anomaly
                              else np.zeros(frame.shape[:2], dtype=bool))
            p["labels"].append(s.is_anomaly)
    size, combine = det.image_size, det.combine
    results: Dict[str, Dict[str, object]] = {}
    for n in names:
        p = per[n]
        labels = np.array(p["labels"])
        c = det.class_names.index(n)
        row: Dict[str, object] = {
            "n_images": len(labels), "n_anomalous": int(labels.sum()),
            "known": class_metrics(p["known"], p["masks"], labels, lambda k: det.normalizers[k], size, combine),
            "auto": class_metrics(p["auto"], p["masks"], labels, lambda k: det.normalizers[k], size, combine),
            "routing_accuracy": float(np.mean([r.class_index == c for r in p["auto"]])),
        }
        if full:
            transductive = fit_normalizer(p["known"], size)
            row["transductive"] = class_metrics(p["known"], p["masks"], labels, lambda k: transductive, size,
                                                 combine)
            for mode in COMBINE_MODES:
                row[f"known_{mode}"] = class_metrics(p["known"], p["masks"], labels,
                                                      lambda k: det.normalizers[k], size, mode)
        results[n] = row
    modes = [m for m in results[names[0]] if isinstance(results[names[0]][m], dict)]
    mean = {m: {k: _mean([results[n][m] for n in names], k) for k in METRICS} for m in modes}
    mean["routing_accuracy"] = float(np.mean([results[n]["routing_accuracy"] for n in names]))
    return {"classes": results, "mean": mean, "backend": det.backend, "device": det.device,
            "precision": det.precision, "combine": combine, "target_fpr": det.target_fpr}


def format_table(report: Dict[str, object]) -> str:
    """A readable per-class table of the known/auto metrics."""
    head = (f"{'class':<16}{'img AUROC':>20}{'pix AUROC':>20}{'AUPRO@0.3':>20}{'routing':>9}\n"
            f"{'':<16}{'known   auto':>20}{'known   auto':>20}{'known   auto':>20}{'acc':>9}")
    lines = [head, "-" * 85]

    def row(name: str, r: Dict[str, object]) -> str:
        cells = "".join(f"{r['known'][k]:>12.3f}{r['auto'][k]:>8.3f}" for k in METRICS)
        return f"{name:<16}{cells}{r['routing_accuracy']:>9.3f}"

    for name, r in report["classes"].items():
        lines.append(row(name, r))
    lines.append("-" * 85)
    lines.append(row("mean", report["mean"]))
    extra = [m for m in report["mean"] if m not in ("known", "auto", "routing_accuracy")]
    for m in extra:
        vals = "  ".join(f"{k}={report['mean'][m][k]:.3f}" for k in METRICS)
        lines.append(f"mean [{m}]  {vals}")
    return "\n".join(lines)
