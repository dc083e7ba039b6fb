"""Several sources in one process: one capture thread each, one batched inference loop.

Simulated captures (the fakes of test_stream.py) for losses, reconnects, drops and bad
frames; the tiny demo model on ONNX Runtime for per-source class/ROI/alarm/FPR and for
batched == unbatched."""
import threading

import numpy as np
import pytest

from hgad_edge.detector import Detector
from hgad_edge.stream import MultiStreamConfig, SourceSpec, StreamConfig, run_sources, run_stream
from hgad_edge.stream.alarm import alarm_frames
from tests.integration.stream_model import onnx_copy
from tests.integration.test_stream import (FakeCapture, FakeDetector, conserved, factory_of, frame_rows, grey,
                                           read_jsonl, write_video)


class BatchFakeDetector(FakeDetector):
    """FakeDetector with the batched path; records every batch size; a 1×1 frame fails the batch."""

    def __init__(self, sleep_s=0.0):
        super().__init__(sleep_s)
        self.batches = []

    def predict(self, frames, class_names=None):
        self.batches.append(len(frames))
        if any(f.shape[:2] == (1, 1) for f in frames):
            raise ValueError("frame too small: expected at least 2x2 pixels")
        sleep, self.sleep_s = self.sleep_s, 0.0
        try:
            out = [self(f) for f in frames]
        finally:
            self.sleep_s = sleep
        if sleep:
            threading.Event().wait(sleep)  # once per batch: what batching buys
        return out


def routed(**factories):
    """A capture factory that dispatches on the source string (`a` → factories['a'])."""
    def factory(source):
        return factories[str(source).split("/")[-1].split(".")[0]](source)
    return factory


def by_source(rows, sid):
    return [r for r in frame_rows(rows) if r["source"] == sid]


# ----------------------------------------------------------------------------- losses and counters


def test_lost_source_reconnects_while_the_other_keeps_scoring(tmp_path):
    a_before = [(True, grey(10)) for _ in range(20)] + [(False, None)]
    a_after = [(True, grey(20)) for _ in range(20)]
    fa = factory_of(FakeCapture(a_before, delay_s=0.01), FakeCapture([], opened=False),
                    FakeCapture(a_after, delay_s=0.01))
    fb = factory_of(FakeCapture([(True, grey(100 + i % 50)) for i in range(150)], delay_s=0.01))
    jsonl = tmp_path / "events.jsonl"
    cfg = MultiStreamConfig(sources=(SourceSpec("a", "rtsp://cam/a", alarm=None),
                                     SourceSpec("b", "rtsp://cam/b", alarm=None)),
                            jsonl=str(jsonl), reconnect_attempts=2, reconnect_delay=0.3, reconnect_max_delay=0.3)
    s = run_sources(cfg, detector=BatchFakeDetector(), capture_factory=routed(a=fa, b=fb))
    a, b = s.by_id()["a"], s.by_id()["b"]
    assert (a.reconnects, a.frames_read, a.ended_by) == (1, 40, "source_lost") and conserved(a)
    assert (b.reconnects, b.frames_read) == (0, 150) and conserved(b)
    rows = read_jsonl(jsonl)
    ra, rb = by_source(rows, "a"), by_source(rows, "b")
    assert {r["frame"] for r in ra} >= {19, 20}  # scored before and after the reconnect
    gap_start = next(r["time"] for r in ra if r["frame"] == 19)
    gap_end = next(r["time"] for r in ra if r["frame"] == 20)
    assert gap_end - gap_start >= 0.5  # the two failed reopen waits
    b_rate = b.frames_scored / max(rb[-1]["time"] - rb[0]["time"], 1e-6)
    during = [r for r in rb if gap_start < r["time"] < gap_end]
    assert len(during) >= 0.3 * b_rate * (gap_end - gap_start), (len(during), b_rate)  # b kept its rate


def test_a_source_that_never_comes_back_ends_only_itself(tmp_path):
    from hgad_edge.stream.view_state import LiveState

    fa = factory_of(FakeCapture([(True, grey(10))] * 5, delay_s=0.01))
    fb = factory_of(FakeCapture([(True, grey(200))] * 120, delay_s=0.01))
    view = LiveState()  # the web view's state (no server needed): what the page's tiles show
    seen = []

    def on_result(sid, index, r):
        if sid == "b" and index == 100:
            seen.append({x["id"]: (x["state"], x["ended_by"]) for x in view.status(history=False)["sources"]})

    jsonl = tmp_path / "events.jsonl"
    cfg = MultiStreamConfig(sources=(SourceSpec("a", "rtsp://cam/a"), SourceSpec("b", "b.avi")), jsonl=str(jsonl),
                            reconnect_attempts=1, reconnect_delay=0.01)
    s = run_sources(cfg, detector=BatchFakeDetector(), capture_factory=routed(a=fa, b=fb), on_result=on_result,
                    sinks=[view])
    assert s.by_id()["a"].ended_by == "source_lost" and s.by_id()["a"].frames_scored == 5
    assert s.by_id()["b"].ended_by == "end_of_source" and s.by_id()["b"].frames_scored == 120
    assert seen == [{"a": ("ended", "source_lost"), "b": ("running", None)}]
    rows = read_jsonl(jsonl)
    a_end = next(i for i, r in enumerate(rows) if r["type"] == "summary" and r["source"] == "a")
    assert sum(1 for r in rows[a_end:] if r["type"] == "frame" and r["source"] == "b") > 50  # b went on
    assert rows[-1]["type"] == "run_summary" and rows[-1]["frames_scored"] == 125
    assert all("source" in r for r in rows) and rows[-1]["source"] is None  # null: all sources


def test_per_source_counters_add_up_with_drops_and_bad_frames(tmp_path):
    fast = factory_of(FakeCapture([(True, grey(i % 256)) for i in range(200)], delay_s=0.002))
    bad = factory_of(FakeCapture([(True, grey(5)), (True, None), (True, grey(6)), (True, grey(7, size=1)),
                                  (True, np.zeros((0, 0, 3), np.uint8)), (True, grey(9))]))
    steady = factory_of(FakeCapture([(True, grey(50))] * 40))
    cfg = MultiStreamConfig(sources=(SourceSpec("fast", "rtsp://x/fast"), SourceSpec("bad", "bad.mp4"),
                                     SourceSpec("steady", "steady.mp4")), reconnect_attempts=0)
    det = BatchFakeDetector(sleep_s=0.02)
    s = run_sources(cfg, detector=det, capture_factory=routed(fast=fast, bad=bad, steady=steady))
    f, b, st = (s.by_id()[k] for k in ("fast", "bad", "steady"))
    assert all(conserved(x) for x in (f, b, st))
    assert f.frames_read == 200 and f.frames_dropped > 0  # newest-frame-only behind a slow detector
    assert (b.frames_read, b.frames_scored, b.bad_frames) == (6, 3, 3)  # None, 1×1 (rejected), empty
    assert (st.frames_read, st.frames_scored, st.frames_dropped) == (40, 40, 0)  # a file: every frame
    assert s.frames_scored == f.frames_scored + b.frames_scored + st.frames_scored
    assert max(det.batches) == 3 and s.mean_batch > 1


def test_max_batch_bounds_every_call_and_every_source_gets_its_turn(tmp_path):
    facs = {k: factory_of(FakeCapture([(True, grey(i))] * 30)) for i, k in enumerate("xyz")}
    det = BatchFakeDetector(sleep_s=0.005)  # slower than the captures: every buffer always has a frame
    jsonl = tmp_path / "e.jsonl"
    cfg = MultiStreamConfig(sources=tuple(SourceSpec(k, f"{k}.mp4", alarm=None) for k in "xyz"), max_batch=2,
                            jsonl=str(jsonl))
    s = run_sources(cfg, detector=det, capture_factory=routed(**facs))
    assert max(det.batches) == 2 and all(x.frames_scored == 30 for x in s.sources)
    rows = frame_rows(read_jsonl(jsonl))
    assert max(r["batch"] for r in rows) == 2
    first = [r["source"] for r in rows[:12]]  # round-robin: no source waits for another to finish
    assert all(first.count(k) >= 3 for k in "xyz"), first


class FprFakeDetector(BatchFakeDetector):
    """A detector with per-FPR thresholds (the Detector's public surface for them): raw > 128 at
    its own FPR 0.01, raw > 64 at FPR 0.5."""

    def __init__(self):
        super().__init__()
        self.target_fpr = 0.01

    @property
    def thresholds(self):
        return [(128.0 if self.target_fpr <= 0.01 else 64.0, 10.0)]

    def set_target_fpr(self, fpr):
        self.target_fpr = float(fpr)


def test_a_source_with_its_own_target_fpr_is_rethresholded(tmp_path):
    from hgad_edge.postprocess import calibrated_score

    levels = [40, 100, 150, 90, 30, 200]
    facs = {k: factory_of(FakeCapture([(True, grey(v)) for v in levels])) for k in "ab"}
    det = FprFakeDetector()
    jsonl = tmp_path / "e.jsonl"
    masks = {}
    cfg = MultiStreamConfig(sources=(SourceSpec("a", "a.mp4", alarm=None),
                                     SourceSpec("b", "b.mp4", alarm=None, target_fpr=0.5)), jsonl=str(jsonl))
    run_sources(cfg, detector=det, capture_factory=routed(**facs),
                on_result=lambda sid, i, r: masks.setdefault(sid, []).append((r.mask, r.anomaly_map, r.threshold)))
    assert det.target_fpr == 0.01  # the shared detector keeps its own thresholds
    rows = read_jsonl(jsonl)
    own = [round(v / 255.0, 6) for v in levels]  # the fake's own scores (source a: left as they are)
    for sid, thr, scores in (("a", 128.0, own), ("b", 64.0, [round(calibrated_score(v, 64.0, 10.0), 6)
                                                               for v in levels])):
        got = by_source(rows, sid)
        assert [r["is_anomaly"] for r in got] == [v > thr for v in levels]
        assert [r["score"] for r in got] == scores
    for mask, amap, t in masks["b"]:  # the mask follows b's threshold too
        assert t == 64.0 and np.array_equal(mask, amap > 64.0)


def test_single_source_records_carry_the_source(tmp_path):
    jsonl = tmp_path / "e.jsonl"
    s = run_stream(StreamConfig(source="clip.mp4", jsonl=str(jsonl)), detector=FakeDetector(),
                   capture_factory=factory_of(FakeCapture([(True, grey(3))] * 4)))
    rows = read_jsonl(jsonl)
    assert s.source == "clip.mp4" and {r["source"] for r in rows} == {"clip.mp4"}
    assert [r["type"] for r in rows] == ["start"] + ["frame"] * 4 + ["summary"]


# ----------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def onnx_run(trained_run, tmp_path_factory):
    return onnx_copy(trained_run, tmp_path_factory)


@pytest.fixture(scope="module")
def ort(onnx_run):
    d = Detector(onnx_run, backend="onnxruntime", threads=1)
    yield d
    d.close()


@pytest.fixture(scope="module")
def frames(demo_root):
    from hgad_edge import data

    samples = data.test_samples(demo_root, data.resolve_classes(demo_root, None))
    return [data.read_image(s.path) for s in samples]


def test_batched_results_equal_unbatched_ones(ort, frames):
    batch = [frames[0], frames[7][16:112, 8:120], frames[14], frames[20][:64, :96]]  # mixed sizes
    together = ort.predict(batch)
    assert len(together) == 4
    for frame, r in zip(batch, together):
        alone = ort(frame)
        span = float(alone.anomaly_map.max() - alone.anomaly_map.min())
        assert r.anomaly_map.shape == alone.anomaly_map.shape == frame.shape[:2]
        assert np.abs(r.anomaly_map - alone.anomaly_map).max() <= 1e-5 * span
        assert (r.class_name, r.is_anomaly) == (alone.class_name, alone.is_anomaly)
        assert r.raw_score == pytest.approx(alone.raw_score, abs=1e-5 * span)


def test_each_source_is_scored_with_its_own_class_roi_alarm_and_fpr(ort, onnx_run, frames, tmp_path):
    n = 16
    seq = [frames[(3 * i) % len(frames)] for i in range(n)]
    video = write_video(tmp_path / "line.avi", seq)
    roi = (16, 32, 64, 48)
    jsonl = tmp_path / "e.jsonl"
    lenient = 0.5  # b's own FPR (the tiny model holds out 2 images a class: its thresholds stay; see below)
    cfg = MultiStreamConfig(sources=(
        SourceSpec("a", video, class_name="brick", roi=roi, alarm=(1, 2)),
        SourceSpec("b", video, alarm=(2, 3), target_fpr=lenient),  # (this model: the same thresholds)
        SourceSpec("c", video, alarm=None)), jsonl=str(jsonl))
    s = run_sources(cfg, detector=ort)
    assert [x.frames_scored for x in s.sources] == [n, n, n] and s.mean_batch > 2.5  # batched, all three
    rows = read_jsonl(jsonl)
    ra, rb, rc = (by_source(rows, k) for k in "abc")
    with Detector(onnx_run, backend="onnxruntime", threads=1, target_fpr=lenient) as at_b:
        exp_a = [ort(f[32:80, 16:80], class_name="brick") for f in seq]
        exp_b = [at_b(f) for f in seq]
    exp_c = [ort(f) for f in seq]
    for rows_, exp in ((ra, exp_a), (rb, exp_b), (rc, exp_c)):
        assert [r["frame"] for r in rows_] == list(range(n))
        for r, e in zip(rows_, exp):
            assert r["raw_score"] == pytest.approx(e.raw_score, rel=1e-5, abs=1e-6)
            assert (r["is_anomaly"], r["class"]) == (e.is_anomaly, e.class_name)
            assert r["score"] == pytest.approx(e.score, abs=1e-5)
    assert {r["class"] for r in ra} == {"brick"}
    alarms = [r for r in rows if r["type"] == "alarm"]
    for sid, rows_, (nn, m) in (("a", ra, (1, 2)), ("b", rb, (2, 3))):
        got = [r["frame"] for r in alarms if r["source"] == sid]
        assert got == alarm_frames([r["is_anomaly"] for r in rows_], nn, m)
        assert all(r["window"] == m for r in alarms if r["source"] == sid)
    assert alarms and not [r for r in alarms if r["source"] == "c"]
    start_b = next(r for r in rows if r["type"] == "start" and r["source"] == "b")
    assert start_b["target_fpr"] == lenient and start_b["alarm"] == [2, 3]
