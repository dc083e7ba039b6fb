"""The typed per-frame result SDK users receive."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np


@dataclass
class Result:
    """What the Detector says about one frame.

    Attributes:
        score: calibrated anomaly score in [0, 1]; 0.5 is the class threshold.
        raw_score: max of the anomaly map (model units).
        is_anomaly: ``raw_score > threshold``.
        anomaly_map: float32 (H, W) at the *input* frame's size (model units).
        mask: bool (H, W), pixels above the threshold.
        class_name: the given or routed product class; ``None`` when the frame was routed and
            looks like no class the model knows (``is_unknown``).
        class_confidence: image-mean inter-class posterior of ``nearest_class``, averaged over
            the levels (also when the class is given: it says how much the frame looks like it).
        threshold: raw-score threshold of the class at the Detector's target FPR.
        timings_ms: milliseconds per stage (batch stages are divided by the batch size).
        is_unknown: the frame was routed and its finest-level median log-likelihood under the
            routed class lies more than ``postprocess.UNKNOWN_Z`` calibration spreads below what
            normal images of that class reach (README "Routing under anomaly"): a product the
            model was not trained on. Score, map and threshold are still those of the nearest class.
        nearest_class: the class whose constants scored the frame (the given or routed one,
            also when ``is_unknown``).
    """

    score: float
    raw_score: float
    is_anomaly: bool
    anomaly_map: np.ndarray
    mask: np.ndarray
    class_name: Optional[str]
    class_confidence: float
    threshold: float
    timings_ms: Dict[str, float] = field(default_factory=dict)
    is_unknown: bool = False
    nearest_class: Optional[str] = None

    def summary(self) -> Dict[str, object]:
        """JSON-friendly scalars (no maps)."""
        return {"score": round(self.score, 6), "raw_score": float(self.raw_score), "is_anomaly": bool(self.is_anomaly),
                "class_name": self.class_name, "class_confidence": round(float(self.class_confidence), 6),
                "is_unknown": bool(self.is_unknown), "nearest_class": self.nearest_class,
                "threshold": float(self.threshold),
                "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()}}
