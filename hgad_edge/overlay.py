"""Pictures people would rather look at than read: heatmap overlays with mask contours."""
from __future__ import annotations

import cv2
import numpy as np

from hgad_edge.result import Result


def heatmap(anomaly_map: np.ndarray, threshold: float) -> np.ndarray:
    """BGR uint8 JET heatmap; the colour scale puts the class threshold at 2/3."""
    v = np.clip(anomaly_map / max(1.5 * threshold, 1e-12), 0.0, 1.0)
    return cv2.applyColorMap((v * 255).astype(np.uint8), cv2.COLORMAP_JET)


def draw_overlay(frame_bgr: np.ndarray, result: Result, alpha: float = 0.45, label: bool = True) -> np.ndarray:
    """The frame blended with the heatmap, the predicted mask's contours and a score banner."""
    frame = frame_bgr if frame_bgr.ndim == 3 else cv2.cvtColor(frame_bgr, cv2.COLOR_GRAY2BGR)
    out = cv2.addWeighted(frame, 1.0 - alpha, heatmap(result.anomaly_map, result.threshold), alpha, 0.0)
    contours, _ = cv2.findContours(result.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, out.shape[0] // 200))
    if label:
        text = (f"{'ANOMALY' if result.is_anomaly else 'ok'} {result.score:.2f} | "
                f"{result.class_name or 'unknown class'} ({result.class_confidence:.2f})")
        scale = max(0.4, out.shape[1] / 700)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(out, (0, 0), (tw + 8, th + 10), (0, 0, 200) if result.is_anomaly else (0, 120, 0), -1)
        cv2.putText(out, text, (4, th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out
