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
from hgad_edge.postprocess import COMBINE_MODES, UNKNOWN_Z, Normalizer, familiarity, score_map
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
    "mean": {...}, "defects": {"classes": {name: {kind: {"known"|"auto": {metric: value}}}}, "mean":
    {kind: ...}}, "backend": ...}``; a defect kind's metrics take its images and the class's good ones.
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
    per: Dict[str, Dict[str, list]] = {n: {"known": [], "auto": [], "masks": [], "labels": [], "kinds": []}
                                       for n in names}
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
            p["kinds"].append(s.defect)
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
            **_routing(p["auto"], labels, c, det.normalizers),
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
    for key in ROUTING_KEYS:  # pooled over the images of every class (a class may lack defects)
        num = sum(results[n][key] * results[n][f"n_{key.split('_')[-1]}"] for n in names
                  if not np.isnan(results[n][key]))
        den = sum(results[n][f"n_{key.split('_')[-1]}"] for n in names if not np.isnan(results[n][key]))
        mean[key] = float(num / den) if den else float("nan")
    per_kind = {n: _per_defect(per[n], lambda k: det.normalizers[k], size, combine) for n in names}
    kinds = sorted({k for n in names for k in per_kind[n]})
    kind_mean = {k: {m: {key: _mean([per_kind[n][k][m] for n in names if k in per_kind[n]], key) for key in METRICS}
                     for m in ("known", "auto")} for k in kinds}
    defects = {"classes": per_kind, "mean": kind_mean}
    return {"classes": results, "mean": mean, "defects": defects, "backend": det.backend, "device": det.device,
            "precision": det.precision, "combine": combine, "target_fpr": det.target_fpr}


ROUTING_KEYS = ("routing_normal", "routing_defective", "unknown_normal", "unknown_defective")


def _routing(auto: Sequence[FrameRaw], labels: np.ndarray, c: int, normalizers) -> Dict[str, float]:
    """Routing accuracy (class not given) on the normal and on the defective images of class
    ``c`` separately, and the share of each that the Detector would call an unknown class."""
    routed = np.array([r.class_index == c for r in auto])
    unknown = np.array([familiarity(r, normalizers[r.class_index]) < UNKNOWN_Z for r in auto])
    out: Dict[str, float] = {"n_normal": int((~labels).sum()), "n_defective": int(labels.sum())}
    for name, sel in (("normal", ~labels), ("defective", labels)):
        out[f"routing_{name}"] = float(routed[sel].mean()) if sel.any() else float("nan")
        out[f"unknown_{name}"] = float(unknown[sel].mean()) if sel.any() else float("nan")
    return out


def _per_defect(p: Dict[str, list], norm_of: Callable[[int], Normalizer], size: int,
                combine: str) -> Dict[str, Dict[str, object]]:
    """Metrics of each defect kind of one class: its images against all the class's good ones."""
    labels, kinds = np.array(p["labels"], dtype=bool), np.array(p["kinds"])
    out: Dict[str, Dict[str, object]] = {}
    for kind in sorted(set(kinds[labels])):
        idx = np.flatnonzero(~labels | (kinds == kind))
        out[kind] = {"n_images": int((kinds == kind).sum())}
        for mode in ("known", "auto"):
            out[kind][mode] = class_metrics([p[mode][i] for i in idx], [p["masks"][i] for i in idx], labels[idx],
                                            norm_of, size, combine)
    return out


def format_table(report: Dict[str, object]) -> str:
    """A readable per-class table of the known/auto metrics."""
    head = (f"{'class':<16}{'img AUROC':>20}{'pix AUROC':>20}{'AUPRO@0.3':>20}{'routing':>16}{'unknown':>16}\n"
            f"{'':<16}{'known   auto':>20}{'known   auto':>20}{'known   auto':>20}{'normal defect':>16}"
            f"{'normal defect':>16}")
    lines = [head, "-" * 108]

    def row(name: str, r: Dict[str, object]) -> str:
        cells = "".join(f"{r['known'][k]:>12.3f}{r['auto'][k]:>8.3f}" for k in METRICS)
        route = "".join(f"{r.get(k, float('nan')):>8.3f}" for k in ROUTING_KEYS)
        return f"{name:<16}{cells}{route}"

    for name, r in report["classes"].items():
        lines.append(row(name, r))
    lines.append("-" * 108)
    lines.append(row("all images", report["mean"]))
    extra = [m for m in report["mean"] if isinstance(report["mean"][m], dict) and m not in ("known", "auto")]
    for m in extra:
        vals = "  ".join(f"{k}={report['mean'][m][k]:.3f}" for k in METRICS)
        lines.append(f"mean [{m}]  {vals}")
    defects = report.get("defects")
    if defects and defects["mean"]:
        lines.append("\nper defect kind (against the class's good images), class known: image / pixel AUROC")
        for kind, m in defects["mean"].items():
            cells = ", ".join(f"{n} {r[kind]['known']['image_auroc']:.3f}/{r[kind]['known']['pixel_auroc']:.3f}"
                              for n, r in defects["classes"].items() if kind in r)
            lines.append(f"{kind:<14} mean {m['known']['image_auroc']:.3f}/{m['known']['pixel_auroc']:.3f}  ({cells})")
    return "\n".join(lines)
