"""Frame → network input: resize to S×S, BGR→RGB, ImageNet mean/std, NCHW float32."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def validate_frame(frame: object) -> np.ndarray:
    """Return ``frame`` as an H×W×3 BGR uint8 array, or raise ``ValueError`` saying what was expected.

    Accepted: uint8 H×W×3 (BGR, as OpenCV decodes), H×W or H×W×1 grayscale (expanded),
    H×W×4 BGRA (alpha dropped), uint16 (scaled by 1/257), float in [0, 1] (scaled by 255).
    """
    if frame is None:
        raise ValueError("frame is None: expected an H×W×3 uint8 BGR image (e.g. from cv2.imread)")
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (3, 4)):
        raise ValueError(f"frame has shape {frame.shape}: expected H×W×3 (BGR), H×W×4 (BGRA) or H×W (gray)")
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"frame is empty (shape {frame.shape})")
    if frame.dtype == np.uint8:
        out = frame
    elif frame.dtype == np.uint16:
        out = (frame.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif frame.dtype in (np.float32, np.float64, np.float16):
        if not np.isfinite(frame).all():
            raise ValueError("frame contains NaN or Inf: expected finite values in [0, 1]")
        lo, hi = float(frame.min()), float(frame.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"float frame has values in [{lo:.3g}, {hi:.3g}]: expected [0, 1] (or pass uint8 0–255)")
        out = (frame.astype(np.float32) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise ValueError(f"frame dtype {frame.dtype} not supported: expected uint8, uint16 or float in [0, 1]")
    if out.ndim == 2:
        out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR)
    elif out.shape[2] == 4:
        out = cv2.cvtColor(out, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(out)


def preprocess(frames: Sequence[np.ndarray], size: int) -> np.ndarray:
    """Stack frames into a normalised (B, 3, S, S) float32 batch."""
    out = np.empty((len(frames), 3, size, size), dtype=np.float32)
    for i, frame in enumerate(frames):
        img = validate_frame(frame)
        interp = cv2.INTER_AREA if min(img.shape[:2]) > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)  # (S, S, 3) BGR
        rgb = img[:, :, ::-1].astype(np.float32) * (1.0 / 255.0)
        out[i] = ((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    return out
