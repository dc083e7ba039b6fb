"""``Detector``: load a model directory and score frames on any backend, on CPU or GPU."""
from __future__ import annotations

import logging
import time
from typing import List, Optional, Sequence

import numpy as np

from hgad_edge import artifact
from hgad_edge.artifact import Artifact
from hgad_edge.calibrate import MIN_TAIL_SCORES, threshold_basis, threshold as quantile_threshold
from hgad_edge.gmm import GaussianMixture
from hgad_edge.postprocess import COMBINE_MODES, FrameRaw, finalize
from hgad_edge.preprocess import to_bgr
from hgad_edge.result import Result
from hgad_edge.runtime import BACKENDS, Scorer, auto_backend, make_backend, check_device
from hgad_edge.runtime.registry import check_precision

log = logging.getLogger(__name__)

__all__ = ["Detector", "BACKENDS"]


class Detector:
    """One unified anomaly detector over several backends.

    Args:
        model_dir: the RUN_DIR written by ``hgad-edge train`` (and extended by export).
        backend: "auto" (fastest usable one, logged with why it skipped the others: TensorRT on a
            GPU > ONNX Runtime > OpenVINO > torch), "torch", "onnxruntime", "openvino" or "tensorrt".
        target_fpr: false-positive rate on normal images that sets each class's threshold
            (default: the one stored at training).
        combine: anomaly map (default: the one stored at training, "position" for new models):
            "position" (per-position calibrated log-likelihood), "loglik", "product"
            (log-likelihood × entropy, the official HGAD map) or "entropy".
        device: "auto" (a CUDA GPU when one is visible, else the CPU), "cpu", "cuda" or "cuda:N".
        precision: "fp32", "fp16" (TensorRT), "bf16" (OpenVINO; ONNX Runtime on aarch64) or
            "int8" (ONNX Runtime, OpenVINO, TensorRT), each an exported variant. Default: the most
            precise one exported for the backend (TensorRT: the export's default engine). With
            ``backend="auto"`` and no precision, fp32 is used wherever it is exported — a lower
            precision is never picked silently; ``precision="int8"`` asks for the fastest backend
            with an int8 variant whose accuracy gate passed. Every reduced precision scores with
            the calibration (normalizers, thresholds) computed with that precision at export.
        threads: intra-op threads of the backend (default: the library's choice).
        gmm_backend: "auto" (native kernel when built), "native" or "numpy".
        channel_order: "bgr" (OpenCV, default) or "rgb" (PIL, imageio, most camera SDKs).

    Example:
        >>> with Detector("runs/demo") as det:
        ...     r = det(cv2.imread("part.png"))          # class inferred
        ...     r = det(frame, class_name="brick")       # class given
    """

    def __init__(self, model_dir: str, backend: str = "auto", target_fpr: Optional[float] = None,
                 combine: Optional[str] = None, device: str = "auto", threads: Optional[int] = None,
                 gmm_backend: str = "auto", channel_order: str = "bgr", precision: Optional[str] = None):
        to_bgr(np.zeros((1, 1, 3), np.uint8), channel_order)  # validates the name
        self.channel_order = channel_order
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        check_device(device)
        check_precision(precision, backend)
        self.model_dir = model_dir
        self.artifact = art = Artifact.read(model_dir)
        self.class_names: List[str] = art.class_names
        self.image_size = art.image_size
        self.combine = combine or art.combine
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine={self.combine!r}; choose one of {COMBINE_MODES}")
        weights = artifact.load_tensors(model_dir, artifact.WEIGHTS)  # read once: GMM arrays + torch flows
        gmms = []
        for l in range(art.n_levels):
            keys = [f"gmm.{l}.{k}" for k in ("mu", "log_pi_inter", "mu_intra", "log_pi_intra")]
            lacking = [k for k in keys if k not in weights]
            if lacking:
                raise artifact.ArtifactError(f"{model_dir}: {artifact.WEIGHTS} lacks {lacking}")
            arr = {k.split(".")[-1]: weights[k].numpy() for k in keys}
            gmms.append(GaussianMixture(**arr, backend=gmm_backend))
        self._backend = (auto_backend(art, device, threads, weights, precision) if backend == "auto"
                         else make_backend(backend, art, device, threads, weights, precision))
        self.device: str = self._backend.device  # where it runs ('auto' resolved)
        # the calibration of the variant that runs (a reduced precision has its own)
        self._variant = (self._backend.name, getattr(self._backend, "precision", None) or "fp32")
        stored = art.calibrated_maps(*self._variant)
        if self.combine not in stored:
            self.close()
            raise ValueError(f"{model_dir} was calibrated for the maps {stored}, not {self.combine!r} "
                             "(written by an older hgad_edge); retrain, or pick one of those")
        self.normalizers = [art.normalizer(c, *self._variant) for c in self.class_names]
        self.scorer = Scorer(self._backend, gmms, art.feature_shapes, self.image_size)
        self._fpr_warned: set = set()
        self.set_target_fpr(target_fpr if target_fpr is not None else art.target_fpr)

    @property
    def backend(self) -> str:
        return self._variant[0]

    @property
    def precision(self) -> str:
        """The precision that runs (its calibration sets the normalizers and thresholds)."""
        return self._variant[1]

    def close(self) -> None:
        """Release the backend (sessions, TensorRT engine, device buffers, CUDA context). Idempotent."""
        backend, self._backend = getattr(self, "_backend", None), None
        if backend is not None:
            backend.close()

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_target_fpr(self, target_fpr: float) -> None:
        """Move every class threshold to the (1 − ``target_fpr``) quantile of its normal scores
        (``calibrate.threshold``). ``threshold_info`` then says per class how it was set: {"n"
        (calibration scores), "finest_fpr" (1/n, the finest FPR they resolve), "basis"
        ("empirical", "gumbel" tail or "max")}; an FPR finer than 1/n is logged once, at the first
        frame scored with it."""
        scores = [self.artifact.scores(c, self.combine, *self._variant) for c in self.class_names]
        self.thresholds = [quantile_threshold(s, target_fpr) for s in scores]  # validates the FPR
        self.target_fpr = float(target_fpr)
        self.threshold_info = {c: {"n": len(s), "finest_fpr": 1.0 / len(s),
                                   "basis": threshold_basis(len(s), self.target_fpr)}
                               for c, s in zip(self.class_names, scores)}
        coarse = {c: b for c, b in self.threshold_info.items() if b["basis"] != "empirical"}
        # logged at the first frame scored at this FPR: a run that fails before scoring prints only its error
        self._fpr_note = None
        if coarse and self.target_fpr not in self._fpr_warned:
            by_n: dict = {}
            for c, b in coarse.items():
                by_n.setdefault(b["n"], []).append(c)
            self._fpr_note = (
                f"target FPR {self.target_fpr:g} is finer than the calibration scores resolve ("
                + "; ".join(f"{', '.join(cs)}: n = {n}, finest FPR 1/n = {1.0 / n:.3g}" for n, cs in by_n.items())
                + "): thresholds " + " and ".join(
                    {"gumbel": "extrapolated from a Gumbel tail fitted to the scores",
                     "max": f"at the largest score (fewer than {MIN_TAIL_SCORES} scores fit no tail)"}[b]
                    for b in sorted({b["basis"] for b in coarse.values()}))
                + "; hold out more normal images (--calib-fraction) for an empirical threshold")

    def class_index(self, class_name: Optional[str]) -> Optional[int]:
        if class_name is None:
            return None
        if class_name not in self.class_names:
            raise ValueError(f"unknown class {class_name!r}; this model knows {self.class_names}")
        return self.class_names.index(class_name)

    def __call__(self, frame: np.ndarray, class_name: Optional[str] = None) -> Result:
        return self.predict([frame], None if class_name is None else [class_name])[0]

    def predict(self, frames: Sequence[np.ndarray], class_names: Optional[Sequence[Optional[str]]] = None
                ) -> List[Result]:
        """Score a batch of BGR uint8 frames; each frame is routed and scored on its own."""
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            frames = [frames]
        if class_names is None:
            class_names = [None] * len(frames)
        if len(class_names) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(class_names)} class names")
        if len(frames) == 0:
            return []
        if self._backend is None:
            raise RuntimeError("this Detector was closed")
        if self.channel_order != "bgr":
            frames = [to_bgr(f, self.channel_order) for f in frames]
        idx = [self.class_index(c) for c in class_names]
        if self._fpr_note is not None:  # once per FPR
            log.warning(self._fpr_note)
            self._fpr_warned.add(self.target_fpr)
            self._fpr_note = None
        raws, timings = self.scorer.raw(frames, idx)
        results = []
        for frame, raw in zip(frames, raws):
            t0 = time.perf_counter()
            res = self.post_process(raw, frame.shape[:2])
            per_frame = {k: v / len(frames) for k, v in timings.items()}
            per_frame["postprocess"] = (time.perf_counter() - t0) * 1e3
            per_frame["total"] = sum(per_frame.values())
            res.timings_ms = per_frame
            results.append(res)
        return results

    def post_process(self, raw: FrameRaw, out_hw) -> Result:
        """Normalise with the routed class's constants, blur, resize to the input, threshold."""
        c = raw.class_index
        return finalize(raw, self.normalizers[c], self.thresholds[c], self.class_names[c], self.image_size,
                        self.combine, out_hw)
