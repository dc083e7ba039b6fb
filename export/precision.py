"""Per-precision calibration and the accuracy gate of a reduced-precision export.

A quantized network's log-likelihoods shift, so the normalizers and score distributions of the
training calibration (fp32) do not fit it. For each reduced-precision variant the export

1. scores the artifact's held-out normal images (the training calibration images, class known)
   *with that variant* and calibrates every class from those scores
   (``hgad_edge.calibrate.calibrate_class``, the code training uses), and
2. runs the **accuracy gate** without labelled anomalies: one synthetic defect (the project's
   generator, ``hgad_edge.data.defects``, exact masks) is drawn on each held-out normal image;
   image AUROC (normal held-out images vs their defective copies) and pixel AUROC (the exact
   masks) are computed per class, fp32 and the variant each scored with its own calibration,
   and averaged over the classes. ``drop`` = the larger of the two AUROC drops; above
   ``max_drop`` the gate is "exceeded".

Scoring follows the calibration's leave-one-out rule: a held-out image, and the defective copy
made from it, are scored with that image taken out of the per-position means ("position" map),
so neither is scored against statistics that contain itself.

AUROC is computed with scikit-learn here: ``hgad_edge.evaluation`` sits above the export layer.
"""
from __future__ import annotations

import dataclasses
import logging
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hgad_edge import artifact
from hgad_edge.artifact import Artifact

log = logging.getLogger(__name__)

# Kept light at import (``hgad-edge --help`` reads the constants): the scoring modules and tqdm
# are imported by the functions that use them.
MAX_DROP = 0.005  # default: image and pixel AUROC on the synthetic defects within 0.005 of fp32
GATE_ACTIONS = ("refuse", "warn")
GATE_SEED = 0


@dataclass
class HeldOut:
    """The held-out normal images (S×S BGR uint8), their class indices, and one synthetic
    defective copy of each with its exact mask."""

    images: List[np.ndarray]
    classes: List[int]
    defects: List[np.ndarray]
    masks: List[np.ndarray]
    kinds: List[str]


def held_out_set(art: Artifact, seed: int = GATE_SEED, progress: bool = False) -> HeldOut:
    """The gate's images: every held-out calibration image of the artifact, resized to S×S, and a
    defect drawn on it (type cycling through ``DEFECT_TYPES``; random stream keyed by (seed,
    class, index), so the same artifact always gets the same set)."""
    import cv2
    from tqdm.auto import tqdm

    from hgad_edge import data
    from hgad_edge.data.defects import DEFECT_TYPES, synthesize_defect

    samples = art.calibration_samples()
    names = art.class_names
    lacking = sorted(set(names) - {c for _, c in samples})
    if lacking:
        raise ValueError(f"per-precision calibration and the accuracy gate need the held-out normal images of "
                         f"every class; none found for {lacking} under {art.data.get('root')!r} (the dataset "
                         "moved? put it back there, or re-train)")
    size = art.image_size
    out = HeldOut([], [], [], [], [])
    for i, (path, cname) in enumerate(tqdm(samples, desc="synthetic defects", disable=not progress, leave=False)):
        img = data.read_image(path)
        if img.shape[:2] != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        kind = DEFECT_TYPES[i % len(DEFECT_TYPES)]
        rng = np.random.default_rng([seed, zlib.crc32(cname.encode()), i])
        defect, mask = synthesize_defect(img, kind, rng)
        out.images.append(img)
        out.classes.append(names.index(cname))
        out.defects.append(defect)
        out.masks.append(mask)
        out.kinds.append(kind)
    return out


def mixtures(art: Artifact) -> list:
    """The per-level Gaussian mixtures of the artifact (as the Detector builds them)."""
    from hgad_edge.gmm import GaussianMixture

    weights = artifact.load_tensors(art.run_dir, artifact.WEIGHTS)
    out = []
    for l in range(art.n_levels):
        arr = {k: weights[f"gmm.{l}.{k}"].numpy() for k in ("mu", "log_pi_inter", "mu_intra", "log_pi_intra")}
        out.append(GaussianMixture(**arr))
    return out


def score(backend, art: Artifact, images: Sequence[np.ndarray], classes: Sequence[int], batch_size: int = 8,
          desc: str = "score", progress: bool = False) -> list:
    """Per-level maps (``FrameRaw``) of ``images`` with their known classes, run by ``backend``."""
    from tqdm.auto import tqdm

    from hgad_edge.runtime.scorer import Scorer

    scorer = Scorer(backend, mixtures(art), art.feature_shapes, art.image_size)
    raws: list = []
    steps = range(0, len(images), batch_size)
    for i in tqdm(steps, desc=desc, disable=not progress, leave=False):
        raws += scorer.raw(list(images[i:i + batch_size]), list(classes[i:i + batch_size]))[0]
    return raws


def calibrate(art: Artifact, raws: Sequence, classes: Sequence[int]) -> Dict[str, Dict[str, object]]:
    """Per class {"normalizer", "scores"} from held-out normal frames scored by one variant."""
    from hgad_edge.calibrate import calibrate_class

    out = {}
    for c, name in enumerate(art.class_names):
        mine = [r for r, y in zip(raws, classes) if y == c]
        out[name] = calibrate_class(mine, art.image_size)
    return out


def _leave_out(norm, logps: Sequence[Sequence[np.ndarray]], i: int):
    """``norm`` with held-out frame ``i`` removed from the per-position means."""
    n = len(logps)
    if n < 2:
        return norm
    means = [((n * m - logps[i][l]) / (n - 1)).astype(np.float32) for l, m in enumerate(norm.ll_pos_mean)]
    return dataclasses.replace(norm, ll_pos_mean=means)


def synthetic_auroc(art: Artifact, calibration: Dict[str, Dict[str, object]], normal: Sequence, defective: Sequence,
                    held: HeldOut, combine: Optional[str] = None) -> Tuple[float, float, Dict[str, Tuple[float, float]]]:
    """(mean image AUROC, mean pixel AUROC, per class (image, pixel)) on the synthetic defects."""
    from sklearn.metrics import roc_auc_score

    from hgad_edge.postprocess import Normalizer, anomaly_map

    combine = combine or art.combine
    size = art.image_size
    per: Dict[str, Tuple[float, float]] = {}
    for c, name in enumerate(art.class_names):
        idx = [i for i, y in enumerate(held.classes) if y == c]
        norm = Normalizer.from_dict(calibration[name]["normalizer"])
        logps = [normal[i].logp for i in idx]
        scores, labels, pix_scores, pix_labels = [], [], [], []
        for k, i in enumerate(idx):
            nk = _leave_out(norm, logps, k) if combine == "position" else norm
            for raw, mask, label in ((normal[i], np.zeros((size, size), bool), 0), (defective[i], held.masks[i], 1)):
                amap = anomaly_map(raw.logp, raw.entropy, nk, size, combine)
                scores.append(float(amap.max()))
                labels.append(label)
                pix_scores.append(amap.ravel())
                pix_labels.append(mask.ravel())
        per[name] = (float(roc_auc_score(labels, scores)),
                     float(roc_auc_score(np.concatenate(pix_labels), np.concatenate(pix_scores))))
    return (float(np.mean([v[0] for v in per.values()])), float(np.mean([v[1] for v in per.values()])), per)


@dataclass
class Reference:
    """The fp32 side of the gate, computed once per export."""

    image_auroc: float
    pixel_auroc: float
    per_class: Dict[str, Tuple[float, float]]
    backend: str


def reference(art: Artifact, backend, held: HeldOut, progress: bool = False) -> Reference:
    """fp32 scores of the held-out set by ``backend`` (ONNX Runtime fp32, ~1e-5 from eager torch),
    calibrated the same way as every variant."""
    normal = score(backend, art, held.images, held.classes, desc="gate fp32 normal", progress=progress)
    defective = score(backend, art, held.defects, held.classes, desc="gate fp32 defects", progress=progress)
    cal = calibrate(art, normal, held.classes)
    img, pix, per = synthetic_auroc(art, cal, normal, defective, held)
    log.info("accuracy gate reference (%s fp32) on %d held-out images + %d synthetic defects: image AUROC %.4f, "
             "pixel AUROC %.4f", backend.name, len(held.images), len(held.defects), img, pix)
    return Reference(img, pix, per, backend.name)


def calibrate_and_gate(art: Artifact, backend, held: HeldOut, ref: Reference, max_drop: float = MAX_DROP,
                       progress: bool = False) -> Dict[str, object]:
    """The per-precision calibration and accuracy gate of the variant ``backend`` runs.

    Returns ``{"calibration": {class: {...}}, "accuracy_gate": {...}}`` for its export section.
    """
    p = getattr(backend, "precision", "?")
    normal = score(backend, art, held.images, held.classes, desc=f"calibrate {backend.name} {p}", progress=progress)
    defective = score(backend, art, held.defects, held.classes, desc=f"gate {backend.name} {p}", progress=progress)
    cal = calibrate(art, normal, held.classes)
    img, pix, per = synthetic_auroc(art, cal, normal, defective, held)
    drop = max(ref.image_auroc - img, ref.pixel_auroc - pix)
    gate = {"status": "passed" if drop <= max_drop else "exceeded", "drop": round(float(drop), 6),
            "max_drop": float(max_drop), "image_auroc_fp32": round(ref.image_auroc, 6),
            "pixel_auroc_fp32": round(ref.pixel_auroc, 6), "image_auroc": round(img, 6),
            "pixel_auroc": round(pix, 6), "reference": f"{ref.backend} fp32", "combine": art.combine,
            "images": len(held.images), "defects": len(held.defects), "seed": GATE_SEED,
            "per_class": {n: {"image_auroc": round(v[0], 6), "pixel_auroc": round(v[1], 6),
                              "image_auroc_fp32": round(ref.per_class[n][0], 6),
                              "pixel_auroc_fp32": round(ref.per_class[n][1], 6)} for n, v in per.items()}}
    log.info("accuracy gate %s %s: image AUROC %.4f vs %.4f fp32, pixel AUROC %.4f vs %.4f → drop %.4f (max %.4f): %s",
             backend.name, p, img, ref.image_auroc, pix, ref.pixel_auroc, drop, max_drop, gate["status"])
    return {"calibration": cal, "accuracy_gate": gate}


def gate_reason(gate: Dict[str, object]) -> str:
    """Why a variant whose gate was exceeded is refused (for its ``reason``)."""
    return (f"its accuracy gate was exceeded: synthetic-defect image/pixel AUROC {gate['image_auroc']:.4f}/"
            f"{gate['pixel_auroc']:.4f} vs fp32 {gate['image_auroc_fp32']:.4f}/{gate['pixel_auroc_fp32']:.4f}, "
            f"drop {gate['drop']:.4f} > max_drop {gate['max_drop']:.4f}; re-export (other calibration images, "
            "--max-drop, or --on-gate-fail warn to keep it for explicit use)")
