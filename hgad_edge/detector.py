"""``Detector``: load a model directory and score frames on any backend."""
from __future__ import annotations

import logging
import time
from typing import Dict, List, Optional, Sequence, Union

import cv2
import numpy as np

from . import artifact
from .calibrate import threshold as quantile_threshold
from .gmm import GaussianMixture
from .preprocess import to_bgr
from .postprocess import COMBINE_MODES, Normalizer, anomaly_map, calibrated_score
from .result import Result
from .scorer import FrameRaw, Scorer

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


def load_model(run_dir: str, meta: Optional[dict] = None, weights: Optional[dict] = None):
    """Rebuild the eager HGAD model of an artifact from its safetensors (no pickle).

    ``weights``: the artifact's weights tensors when the caller has read them already."""
    from .config import ModelConfig
    from .model import HGAD

    meta = meta or artifact.read_metadata(run_dir)
    cfg = ModelConfig.from_dict(meta["model_config"])
    model = HGAD(cfg, backbone_weights="none")
    model.backbone.body.load_state_dict(artifact.load_tensors(run_dir, artifact.BACKBONE))
    if weights is None:
        weights = artifact.load_tensors(run_dir, artifact.WEIGHTS)
    weights = {k: v for k, v in weights.items() if not k.startswith("gmm.")}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shapes that do not fit the config in model.json
        raise artifact.ArtifactError(f"{run_dir}: weights do not fit the model config: {e}") from e
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise artifact.ArtifactError(f"{run_dir}: weights do not match the model config "
                                     f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


def _make_backend(name: str, run_dir: str, meta: dict, device: str, threads: Optional[int],
                  weights: Optional[dict] = None):
    if name == "torch":
        from ._backends import TorchBackend

        return TorchBackend(load_model(run_dir, meta, weights), device=device, threads=threads)
    if name in ("onnxruntime", "tensorrt"):
        try:
            from .export import runtime
        except ImportError as e:
            raise ImportError(f"backend {name!r} needs the export package: {e}") from e
        return runtime.make_backend(name, run_dir, meta, device=device, threads=threads)
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")


def _auto_backend(run_dir: str, meta: dict, device: str, threads: Optional[int], weights: Optional[dict] = None):
    """Fastest available: TensorRT engine > ONNX Runtime > torch."""
    exports = meta.get("exports", {})
    order = [b for b in ("tensorrt", "onnxruntime") if b in exports] + ["torch"]
    errors = []
    for name in order:
        try:
            backend = _make_backend(name, run_dir, meta, device, threads, weights)
            log.info("backend auto → %s", name)
            return backend
        except artifact.ArtifactError:
            raise  # a damaged model is not a missing backend: say so, don't try the next one
        except (ImportError, RuntimeError, ValueError) as e:
            errors.append(f"{name}: {e}")
            log.info("backend %s not usable here: %s", name, e)
    raise RuntimeError("no backend could be loaded: " + "; ".join(errors))


class Detector:
    """One unified anomaly detector over several backends.

    Args:
        model_dir: the RUN_DIR written by ``hgad-edge train`` (and extended by export).
        backend: "auto" (fastest available, logged), "torch", "onnxruntime" or "tensorrt".
        target_fpr: false-positive rate on normal images that sets each class's threshold
            (default: the one stored at training).
        combine: anomaly map (default: the one stored at training, "position" for new models):
            "position" (per-position calibrated log-likelihood), "loglik", "product"
            (log-likelihood × entropy, the official HGAD map) or "entropy".
        device: "cpu" or "cuda".
        threads: intra-op threads of the backend (default: the library's choice).
        gmm_backend: "auto" (native kernel when built), "native" or "numpy".
        channel_order: "bgr" (OpenCV, default) or "rgb" (PIL, imageio, most camera SDKs).

    Example:
        >>> det = Detector("runs/demo")
        >>> r = det(cv2.imread("part.png"))          # class inferred
        >>> r = det(frame, class_name="brick")       # class given
    """

    def __init__(self, model_dir: str, backend: str = "auto", target_fpr: Optional[float] = None,
                 combine: Optional[str] = None, device: str = "cpu", threads: Optional[int] = None,
                 gmm_backend: str = "auto", channel_order: str = "bgr"):
        to_bgr(np.zeros((1, 1, 3), np.uint8), channel_order)  # validates the name
        self.channel_order = channel_order
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        self.model_dir = model_dir
        self.meta = artifact.read_metadata(model_dir)
        cfg = self.meta["model_config"]
        self.class_names: List[str] = list(cfg["class_names"])
        self.image_size = int(cfg["image_size"])
        cal = self.meta["calibration"]
        self.normalizers = [Normalizer.from_dict(cal[c]["normalizer"]) for c in self.class_names]
        self.combine = combine or self.meta.get("combine", "product")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"combine={self.combine!r}; choose one of {COMBINE_MODES}")
        stored = [m for m in COMBINE_MODES if all(m in cal[c]["scores"] for c in self.class_names)]
        if self.combine not in stored:
            raise ValueError(f"{model_dir} was calibrated for the maps {stored}, not {self.combine!r} "
                             "(written by an older hgad_edge); retrain, or pick one of those")
        weights = artifact.load_tensors(model_dir, artifact.WEIGHTS)  # read once: GMM arrays + torch flows
        gmms = []
        for l in range(len(self.meta["feature_shapes"])):
            keys = [f"gmm.{l}.{k}" for k in ("mu", "log_pi_inter", "mu_intra", "log_pi_intra")]
            lacking = [k for k in keys if k not in weights]
            if lacking:
                raise artifact.ArtifactError(f"{model_dir}: {artifact.WEIGHTS} lacks {lacking}")
            arr = {k.split(".")[-1]: weights[k].numpy() for k in keys}
            gmms.append(GaussianMixture(**arr, backend=gmm_backend))
        self._backend = (_auto_backend(model_dir, self.meta, device, threads, weights) if backend == "auto"
                         else _make_backend(backend, model_dir, self.meta, device, threads, weights))
        self.scorer = Scorer(self._backend, gmms, self.meta["feature_shapes"], self.image_size)
        self.set_target_fpr(target_fpr if target_fpr is not None else float(self.meta.get("target_fpr", 0.01)))

    @property
    def backend(self) -> str:
        return self._backend.name

    def set_target_fpr(self, target_fpr: float) -> None:
        """Move every class threshold to the (1 − ``target_fpr``) quantile of its normal scores."""
        cal = self.meta["calibration"]
        self.target_fpr = float(target_fpr)
        self.thresholds = [quantile_threshold(cal[c]["scores"][self.combine], self.target_fpr)
                           for c in self.class_names]

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
        if self.channel_order != "bgr":
            frames = [to_bgr(f, self.channel_order) for f in frames]
        idx = [self.class_index(c) for c in class_names]
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
        amap = anomaly_map(raw.logp, raw.entropy, self.normalizers[c], self.image_size, self.combine)
        raw_score = float(amap.max())
        thr, spread = self.thresholds[c]
        h, w = int(out_hw[0]), int(out_hw[1])
        if (h, w) != amap.shape:
            amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
        return Result(score=calibrated_score(raw_score, thr, spread), raw_score=raw_score,
                      is_anomaly=raw_score > thr, anomaly_map=amap, mask=amap > thr,
                      class_name=self.class_names[c], class_confidence=raw.class_confidence,
                      threshold=thr)
