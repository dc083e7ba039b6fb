"""Bad frames through the public Detector: converted as ``validate_frame`` documents, or a
ValueError/TypeError that says what was expected — never a crash, never a NaN map."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hgad_edge import data
from hgad_edge.detector import Detector
from hgad_edge.preprocess import CHANNEL_ORDERS, to_bgr, validate_frame


@pytest.fixture(scope="module")
def det(tiny_run):
    return Detector(tiny_run, backend="torch")


@pytest.fixture(scope="module")
def frame(tiny_root):
    """A real 64×64 colour test photograph (a defective retina, so the map is not flat)."""
    s = [s for s in data.test_samples(tiny_root, ["retina"]) if s.is_anomaly][0]
    return data.read_image(s.path)


def _check(r, hw):
    """A well-formed result at the input's size."""
    assert r.anomaly_map.shape == hw and r.mask.shape == hw
    assert np.isfinite(r.anomaly_map).all(), "NaN/Inf in the anomaly map"
    assert np.isfinite(r.raw_score) and 0.0 <= r.score <= 1.0
    # a blank or extreme frame may be no product at all: then it is unknown, still scored by its nearest class
    assert (r.class_name in ("grass", "retina") and not r.is_unknown) or (
        r.class_name is None and r.is_unknown and r.nearest_class in ("grass", "retina"))


def _same(a, b):
    assert a.class_name == b.class_name
    assert a.raw_score == pytest.approx(b.raw_score, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- converted


def test_equivalent_encodings_score_like_the_uint8_frame(det, frame):
    """float32/float64 in [0, 1], uint16, BGRA and big-endian copies of one frame are that frame."""
    ref = det(frame)
    _check(ref, frame.shape[:2])
    f01 = frame.astype(np.float64) / 255.0
    variants = {
        "float32 0-1": f01.astype(np.float32),
        "float64 0-1": f01,
        "float16 0-1": f01.astype(np.float16),
        "uint16": frame.astype(np.uint16) * 257,
        "uint16 big-endian": (frame.astype(np.uint16) * 257).astype(">u2"),
        "float32 big-endian": f01.astype(">f4"),
        "BGRA": cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA),
    }
    for name, v in variants.items():
        if name != "float16 0-1":  # float16 cannot hold every k/255 exactly
            assert np.array_equal(validate_frame(v), frame), name
        r = det(v)
        _check(r, frame.shape[:2])
        if name != "float16 0-1":
            _same(r, ref)


def test_grayscale_2d_and_single_channel_are_replicated(det, frame):
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    ref = det(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    for g in (gray, gray[:, :, None], gray.astype(np.float32) / 255.0):
        assert validate_frame(g).shape == frame.shape
        r = det(g)
        _check(r, gray.shape)
        _same(r, ref)


@pytest.mark.parametrize("view", ["strided", "flipped", "transposed", "fortran", "channel-reversed",
                                  "broadcast", "gray-strided", "readonly"])
def test_non_contiguous_views_score_like_their_copy(det, frame, view):
    big = np.ascontiguousarray(np.concatenate([frame, frame[::-1]], axis=1))  # (64, 128, 3)
    v = {
        "strided": big[::2, ::3],
        "flipped": frame[::-1, ::-1],
        "transposed": frame.transpose(1, 0, 2),
        "fortran": np.asfortranarray(frame),
        "channel-reversed": frame[:, :, ::-1],
        "broadcast": np.broadcast_to(frame[:1], frame.shape),  # zero stride, read-only
        "gray-strided": cv2.cvtColor(big, cv2.COLOR_BGR2GRAY)[:, ::2],
        "readonly": frame.copy(),
    }[view]
    if view == "readonly":
        v.flags.writeable = False
    copy = np.array(v, order="C")
    out = validate_frame(v)
    assert out.flags.c_contiguous and out.dtype == np.uint8 and out.shape == v.shape[:2] + (3,)
    r = det(v)
    _check(r, v.shape[:2])
    _same(r, det(copy))


def test_one_pixel_and_extreme_aspect_frames(det):
    for shape in ((1, 1, 3), (1, 1), (1, 500, 3), (700, 2, 3)):
        f = np.full(shape, 128, np.uint8)
        r = det(f)
        _check(r, shape[:2])


def test_8000x8000_frame(det, frame):
    big = cv2.resize(frame, (8000, 8000), interpolation=cv2.INTER_NEAREST)
    r = det(big)
    _check(r, (8000, 8000))
    small = det(frame)
    assert r.class_name == small.class_name
    # the same photograph at 125× the pixels: downscaled back to S it is nearly the same input
    assert r.raw_score == pytest.approx(small.raw_score, rel=0.2, abs=0.05)


def test_constant_and_extreme_frames_give_finite_maps(det):
    for value in (0, 255):
        _check(det(np.full((40, 30, 3), value, np.uint8)), (40, 30))
    rng = np.random.default_rng(0)
    _check(det(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)), (50, 60))
    _check(det(np.full((20, 20), 65535, np.uint16)), (20, 20))


# ----------------------------------------------------------------------------- rejected


@pytest.mark.parametrize("bad, exc, match", [
    (None, ValueError, "frame is None: expected an H×W×3 uint8 BGR"),
    (np.zeros((0, 0, 3), np.uint8), ValueError, r"frame is empty \(shape \(0, 0, 3\)\)"),
    (np.zeros((0, 5), np.uint8), ValueError, "frame is empty"),
    (np.zeros((5, 0, 3), np.uint8), ValueError, "frame is empty"),
    (np.zeros((0,), np.uint8), ValueError, "expected H×W×3 .BGR., H×W×4 .BGRA. or H×W .gray."),
    (np.zeros((3, 32, 32), np.uint8), ValueError, r"shape \(3, 32, 32\): expected H×W×3"),
    (np.zeros((8, 8, 2), np.uint8), ValueError, "expected H×W×3"),
    (np.zeros((8, 8, 5), np.uint8), ValueError, "expected H×W×3"),
    (np.zeros((1, 1, 8, 8, 3), np.uint8), ValueError, "expected H×W×3"),
    (np.zeros((8, 8, 3), bool), ValueError, "dtype bool not supported: expected uint8, uint16 or float in"),
    (np.zeros((8, 8, 3), np.int32), ValueError, "dtype int32 not supported"),
    (np.zeros((8, 8, 3), np.int64), ValueError, "dtype int64 not supported"),
    (np.zeros((8, 8, 3), np.complex64), ValueError, "dtype complex64 not supported"),
    (np.zeros((8, 8, 3), object), ValueError, "dtype object not supported"),
    (np.full((8, 8, 3), 200.0, np.float32), ValueError, r"values in \[200, 200\]: expected \[0, 1\]"),
    (np.full((8, 8, 3), -0.5, np.float64), ValueError, r"expected \[0, 1\]"),
    (np.full((8, 8, 3), np.nan, np.float32), ValueError, "NaN or Inf: expected finite values in"),
    (np.full((8, 8), np.inf, np.float64), ValueError, "NaN or Inf"),
    ([[[0, 0, 0]]], TypeError, "must be a numpy array, got list"),
    ("frame.png", TypeError, "must be a numpy array, got str"),
])
def test_rejected_frames_say_what_was_expected(det, bad, exc, match):
    with pytest.raises(exc, match=match):
        validate_frame(bad)
    with pytest.raises(exc, match=match):
        det(bad)


def test_a_single_nan_pixel_is_rejected_not_averaged_away(det, frame):
    f = frame.astype(np.float32) / 255.0
    f[10, 20, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        det(f)
    f[10, 20, 1] = -np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        det(f)


def test_torch_tensor_is_a_type_error(det, frame):
    import torch

    with pytest.raises(TypeError, match="got Tensor"):
        det(torch.from_numpy(frame))


def test_bad_frame_in_a_batch_names_the_problem_and_good_frames_still_score(det, frame):
    with pytest.raises(ValueError, match="frame is None"):
        det.predict([frame, None])
    _check(det.predict([frame])[0], frame.shape[:2])  # the detector is still usable


# ----------------------------------------------------------------------------- channel order


def test_rgb_frames_are_converted_by_to_bgr(det, frame):
    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    assert np.array_equal(to_bgr(rgb, "rgb"), frame)
    assert np.array_equal(to_bgr(rgb, "RGB"), frame)
    assert np.array_equal(to_bgr(frame, "bgr"), frame)
    assert np.array_equal(to_bgr(frame), frame)
    rgba = cv2.cvtColor(frame, cv2.COLOR_BGR2RGBA)
    assert np.array_equal(to_bgr(rgba, "rgb"), frame)
    assert np.array_equal(to_bgr(rgb.astype(np.float32) / 255.0, "rgb"), frame)
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert np.array_equal(to_bgr(gray, "rgb"), to_bgr(gray, "bgr"))
    assert np.abs(frame[..., 0].astype(int) - frame[..., 2]).mean() > 10  # a colour photograph
    _same(det(to_bgr(rgb, "rgb")), det(frame))
    # the flag matters: the same pixels read as BGR are a different image
    assert not np.array_equal(to_bgr(rgb, "bgr"), frame)


@pytest.mark.parametrize("order", ["bgra", "hsv", "", None, 3])
def test_unknown_channel_order_is_a_clear_error(frame, order):
    with pytest.raises(ValueError, match=r"channel order .* expected one of \('bgr', 'rgb'\)"):
        to_bgr(frame, order)
    assert CHANNEL_ORDERS == ("bgr", "rgb")


# ----------------------------------------------------------------------------- property


_DTYPES = st.sampled_from([np.uint8, np.uint16, np.float16, np.float32, np.float64, np.int16, np.int32,
                           np.uint32, np.bool_, np.dtype(">u2"), np.dtype(">f8")])
_SHAPES = st.one_of(
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=48),
    st.tuples(st.integers(0, 48), st.integers(0, 48), st.sampled_from([0, 1, 2, 3, 4, 5])),
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
)


@st.composite
def _frames(draw):
    dtype = np.dtype(draw(_DTYPES))
    shape = draw(_SHAPES)
    if dtype.kind == "f":
        # mostly in [0, 1], sometimes anything a float can hold (NaN, ±Inf, huge, negative)
        elements = st.one_of(st.floats(0.0, 1.0, width=16), st.floats(width=16, allow_nan=True))
        if draw(st.booleans()):
            elements = st.floats(0.0, 1.0, width=16)
    else:
        elements = None
    arr = draw(hnp.arrays(dtype, shape, elements=elements, fill=st.nothing() if elements is None else None))
    view = draw(st.sampled_from(["as is", "flip", "stride"]))
    if arr.ndim >= 2 and view == "flip":
        arr = arr[::-1, ::-1]
    elif arr.ndim >= 2 and view == "stride":
        arr = arr[::2, ::2]
    return arr


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                               HealthCheck.too_slow])
@given(f=_frames())
def test_property_any_array_scores_finitely_or_raises_a_documented_error(det, f):
    try:
        r = det(f)
    except (ValueError, TypeError) as e:
        assert "expected" in str(e), f"error does not say what was expected: {e}"
        return
    _check(r, f.shape[:2])


@settings(max_examples=100, deadline=None)
@given(f=_frames())
def test_property_validate_frame_returns_bgr_uint8_or_raises_value_error(f):
    try:
        out = validate_frame(f)
    except ValueError as e:
        assert "expected" in str(e)
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape == f.shape[:2] + (3,)
    assert out.flags.c_contiguous
    if f.dtype == np.uint8 and f.ndim == 3 and f.shape[2] == 3:
        assert np.array_equal(out, f)


def test_property_test_can_fail(det, monkeypatch):
    """The property is not vacuous: a NaN map from the post-processing is caught by _check."""
    import hgad_edge.postprocess as postprocess

    real = postprocess.anomaly_map
    monkeypatch.setattr(postprocess, "anomaly_map", lambda *a, **k: real(*a, **k) * np.nan)
    r = det(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(AssertionError, match="NaN"):
        _check(r, (8, 8))
