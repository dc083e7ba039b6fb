"""preprocess() against the textbook float64 formula, for any input size."""
import cv2
import numpy as np
import pytest

from hgad_edge.preprocess import IMAGENET_MEAN, IMAGENET_STD, preprocess


@pytest.mark.parametrize("shape", [(64, 64, 3), (40, 90, 3), (300, 451, 3), (64, 64), (64, 64, 4)])
def test_preprocess_matches_float64_reference(shape):
    rng = np.random.default_rng(sum(shape))
    frames = [(rng.random(shape) * 255).astype(np.uint8) for _ in range(2)]
    out = preprocess(frames, 64)
    assert out.shape == (2, 3, 64, 64) and out.dtype == np.float32 and out.flags.c_contiguous
    for frame, got in zip(frames, out):
        bgr = frame if frame.ndim == 3 and frame.shape[2] == 3 else (
            cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR))
        if bgr.shape[:2] != (64, 64):
            interp = cv2.INTER_AREA if min(bgr.shape[:2]) > 64 else cv2.INTER_LINEAR
            bgr = cv2.resize(bgr, (64, 64), interpolation=interp)
        ref = ((bgr[:, :, ::-1].astype(np.float64) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
        np.testing.assert_allclose(got, ref, atol=2e-6)
