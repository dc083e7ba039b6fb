"""Stream scoring end to end, headless: generated videos from the demo data, folders, failing
and slow sources, the CLI as a subprocess (unopenable source, SIGTERM)."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest

from hgad_edge import data
from hgad_edge.stream.alarm import alarm_frames
from hgad_edge.stream.capture import SourceError
from hgad_edge.detector import Detector
from hgad_edge.result import Result
from hgad_edge.stream import StreamConfig, annotate, run_stream

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------- helpers


def write_video(path, frames, fourcc="FFV1", fps=10.0):
    """FFV1 is lossless: the decoded frames equal the written ones, so verdicts are known."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return str(path)


def read_video(path):
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def frame_rows(rows):
    return [r for r in rows if r["type"] == "frame"]


def conserved(s):
    return s.frames_scored + s.frames_dropped + s.bad_frames == s.frames_read


class FakeDetector:
    """Scores a frame by its mean grey level (> 128: anomalous); optional sleep; rejects 1×1 frames."""

    class_names = ["part"]
    backend = "fake"

    def __init__(self, sleep_s=0.0):
        self.sleep_s = sleep_s
        self.calls = 0

    def class_index(self, name):
        if name not in (None, "part"):
            raise ValueError(f"unknown class {name!r}; this model knows {self.class_names}")
        return None if name is None else 0

    def __call__(self, frame, class_name=None):
        if frame.shape[:2] == (1, 1):
            raise ValueError("frame too small: expected at least 2x2 pixels")
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)
        m = float(frame.mean())
        amap = np.full(frame.shape[:2], m / 255.0, np.float32)
        return Result(score=m / 255.0, raw_score=m, is_anomaly=m > 128, anomaly_map=amap, mask=amap > 0.5,
                      class_name="part", class_confidence=1.0, threshold=128.0, timings_ms={"total": 0.1})


def grey(level, size=32):
    return np.full((size, size, 3), level, np.uint8)


class FakeCapture:
    """Delivers ``items`` ((ok, frame) pairs or exceptions), then reads fail."""

    def __init__(self, items, opened=True, delay_s=0.0):
        self.items, self.opened, self.delay_s, self.released = list(items), opened, delay_s, False

    def isOpened(self):  # noqa: N802
        return self.opened

    def read(self):
        if self.delay_s:
            time.sleep(self.delay_s)
        if not self.items:
            return False, None
        item = self.items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def get(self, prop):
        return 0.0

    def release(self):
        self.released = True


def factory_of(*captures):
    """A capture factory handing out ``captures`` in turn, then unopened ones."""
    queue = list(captures)
    calls = []

    def factory(source):
        calls.append(source)
        return queue.pop(0) if queue else FakeCapture([], opened=False)

    factory.calls = calls
    return factory


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def images(demo_root):
    """Every demo test image (3 classes × good and defective), 128² BGR."""
    samples = data.test_samples(demo_root, data.resolve_classes(demo_root, None))
    return [data.read_image(s.path) for s in samples]


@pytest.fixture(scope="module")
def det(trained_run, images):
    """The tiny model with a target FPR at which both verdicts occur on the demo images (its
    accuracy is not what these tests check)."""
    d = Detector(trained_run, backend="torch")
    for fpr in (None, 0.05, 0.2, 0.5, 0.9):
        if fpr is not None:
            d.set_target_fpr(fpr)
        verdicts = [d(im).is_anomaly for im in images]
        if 2 <= sum(verdicts) <= len(verdicts) - 2:
            return d
    pytest.fail(f"no target FPR gives both verdicts: {verdicts}")


@pytest.fixture(scope="module")
def verdicts(det, images):
    return [det(im).is_anomaly for im in images]


# ----------------------------------------------------------------------------- video, folder, outputs


def test_every_frame_in_order_with_detector_verdicts(det, images, verdicts, tmp_path):
    video = write_video(tmp_path / "test.avi", images)
    jsonl = tmp_path / "events.jsonl"
    s = run_stream(StreamConfig(source=video, jsonl=str(jsonl), alarm=None), detector=det)
    assert (s.ended_by, s.frames_read, s.frames_scored, s.frames_dropped, s.bad_frames) == \
        ("end_of_source", len(images), len(images), 0, 0)
    rows = read_jsonl(jsonl)
    assert rows[0]["type"] == "start" and rows[-1]["type"] == "summary"
    assert rows[-1]["frames_scored"] == len(images)
    frames = frame_rows(rows)
    assert [r["frame"] for r in frames] == list(range(len(images)))
    decoded = read_video(video)
    for row, frame, image, expected in zip(frames, decoded, images, verdicts):
        np.testing.assert_array_equal(frame, image)  # lossless
        direct = det(frame)
        assert row["is_anomaly"] == direct.is_anomaly == expected
        assert row["raw_score"] == pytest.approx(direct.raw_score, rel=1e-5)
        assert row["class"] == direct.class_name
        assert {"time", "score", "confidence", "latency_ms"} <= set(row)
        assert {"backbone", "total"} <= set(row["timings_ms"])
    assert s.anomalous == sum(verdicts) > 0
    assert s.fps > 0 and 0 < s.latency_p50_ms <= s.latency_p99_ms


def test_alarm_fires_on_a_constructed_sequence(det, images, verdicts, tmp_path):
    normal = [im for im, v in zip(images, verdicts) if not v]
    bad = [im for im, v in zip(images, verdicts) if v]
    pick = lambda pool, n: [pool[i % len(pool)] for i in range(n)]  # noqa: E731
    frames = pick(normal, 4) + pick(bad, 4) + pick(normal, 5) + pick(bad, 3) + pick(normal, 2)
    expected_verdicts = [False] * 4 + [True] * 4 + [False] * 5 + [True] * 3 + [False] * 2
    expected = alarm_frames(expected_verdicts, 3, 5)
    assert expected == [6, 15]  # the sequence really has two episodes
    jsonl = tmp_path / "events.jsonl"
    s = run_stream(StreamConfig(source=write_video(tmp_path / "alarm.avi", frames), jsonl=str(jsonl), alarm=(3, 5)),
                   detector=det)
    rows = read_jsonl(jsonl)
    assert [r["is_anomaly"] for r in frame_rows(rows)] == expected_verdicts
    alarms = [r for r in rows if r["type"] == "alarm"]
    assert [a["frame"] for a in alarms] == expected and s.alarms == 2
    assert all(a["anomalous"] == 3 and a["window"] == 5 for a in alarms)


def test_folder_source_sorted_with_an_unreadable_file(det, images, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    chosen = images[:6]
    for i, im in enumerate(chosen):
        cv2.imwrite(str(folder / f"f{i:03d}.png"), im)
    (folder / "f002b.png").write_bytes(b"not a png")  # sorts between f002 and f003
    (folder / "notes.txt").write_text("ignored")
    jsonl = tmp_path / "events.jsonl"
    s = run_stream(StreamConfig(source=str(folder), jsonl=str(jsonl), alarm=None), detector=det)
    assert (s.frames_read, s.frames_scored, s.bad_frames, s.frames_dropped) == (7, 6, 1, 0)
    rows = frame_rows(read_jsonl(jsonl))
    assert [r["frame"] for r in rows] == [0, 1, 2, 4, 5, 6]
    for row, im in zip(rows, chosen):
        assert row["raw_score"] == pytest.approx(det(im).raw_score, rel=1e-5)


def test_save_writes_a_readable_mp4_with_every_scored_frame(det, images, tmp_path):
    out = tmp_path / "annotated.mp4"
    s = run_stream(StreamConfig(source=write_video(tmp_path / "in.avi", images[:7]), save=str(out), max_frames=5),
                   detector=det)
    assert s.ended_by == "max_frames" and s.frames_scored == 5
    written = read_video(out)
    assert len(written) == 5 and written[0].shape == images[0].shape
    assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT) == 5


def test_roi_scores_only_the_crop_and_draws_in_place(det, images, tmp_path):
    roi = (16, 32, 64, 48)
    jsonl = tmp_path / "events.jsonl"
    run_stream(StreamConfig(source=write_video(tmp_path / "in.avi", images[:3]), jsonl=str(jsonl), roi=roi,
                            alarm=None), detector=det)
    for row, im in zip(frame_rows(read_jsonl(jsonl)), images):
        assert row["raw_score"] == pytest.approx(det(im[32:80, 16:80]).raw_score, rel=1e-5)
    r = det(images[0][32:80, 16:80])
    assert r.anomaly_map.shape == (48, 64)
    out = annotate(images[0], r, roi, fps=10.0, latency_ms=50.0)
    below = (slice(90, 128), slice(0, 128))  # outside the crop and the banner
    np.testing.assert_array_equal(out[below], images[0][below])
    assert not np.array_equal(out[40:70, 30:70], images[0][40:70, 30:70])  # heatmap drawn in the crop
    with pytest.raises(ValueError, match="outside the 128x128 frame"):
        run_stream(StreamConfig(source=write_video(tmp_path / "in2.avi", images[:1]), roi=(200, 0, 10, 10)),
                   detector=det)


# ----------------------------------------------------------------------------- failing and slow sources


@pytest.mark.parametrize("failure", ["read_false", "raises"])
def test_live_source_lost_mid_stream_is_reconnected(failure, tmp_path, caplog):
    first = [(True, grey(10 + i)) for i in range(5)]
    first.append(OSError("camera unplugged") if failure == "raises" else (False, None))
    second = [(True, grey(200 + i)) for i in range(8)]
    factory = factory_of(FakeCapture(first, delay_s=0.01), FakeCapture([], opened=False),
                         FakeCapture(second, delay_s=0.02))
    jsonl = tmp_path / "events.jsonl"
    caplog.set_level("WARNING", logger="hgad_edge")
    s = run_stream(StreamConfig(source="rtsp://camera/stream", jsonl=str(jsonl), alarm=(2, 3), reconnect_attempts=3,
                                reconnect_delay=0.01, reconnect_max_delay=0.02),
                   detector=FakeDetector(), capture_factory=factory)
    # open, lost → 1 failed reopen → reconnected, end of frames → 3 failed reopens → given up
    assert len(factory.calls) == 1 + 2 + 3
    assert s.reconnects == 1 and s.ended_by == "source_lost" and s.frames_read == 13 and conserved(s)
    rows = frame_rows(read_jsonl(jsonl))
    assert rows[-1]["frame"] == 12 and max(r["frame"] for r in rows) >= 5  # scored after the reconnect
    assert s.alarms == 1
    text = caplog.text
    assert "lost; reconnecting" in text and "reconnected after 2 attempt" in text and "giving up after 3" in text


def test_live_source_that_never_comes_back_ends_with_source_lost():
    factory = factory_of(FakeCapture([(True, grey(0))] * 3))
    s = run_stream(StreamConfig(source=0, reconnect_attempts=0), detector=FakeDetector(), capture_factory=factory)
    assert s.ended_by == "source_lost" and s.frames_read == 3 and conserved(s)


def test_slow_inference_drops_frames_and_counts_them():
    frames = [(True, grey(i % 256)) for i in range(150)]
    seen = []
    s = run_stream(StreamConfig(source="rtsp://fast/camera", reconnect_attempts=0),
                   detector=FakeDetector(sleep_s=0.02), capture_factory=factory_of(FakeCapture(frames, delay_s=0.002)),
                   on_result=lambda i, r: seen.append(i))
    assert s.frames_read == 150 and s.frames_dropped > 0 and s.frames_scored < 150 and conserved(s)
    assert seen == sorted(seen) and len(seen) == s.frames_scored
    assert seen[-1] == 149  # the newest frame is always the one scored


def test_realtime_file_is_paced_and_drops(images, tmp_path):
    s = run_stream(StreamConfig(source=write_video(tmp_path / "in.avi", [grey(i * 10) for i in range(20)]),
                                realtime=True, fps=200.0, alarm=None),
                   detector=FakeDetector(sleep_s=0.02))
    assert s.frames_read == 20 and s.frames_dropped > 0 and conserved(s)


def test_bad_frames_are_counted_and_skipped():
    items = [(True, grey(5)), (True, None), (True, np.zeros((0, 0, 3), np.uint8)), (True, grey(7, size=1)),
             (True, grey(9))]
    det = FakeDetector()
    s = run_stream(StreamConfig(source="clip.mp4"), detector=det, capture_factory=factory_of(FakeCapture(items)))
    assert (s.frames_read, s.frames_scored, s.bad_frames, s.ended_by) == (5, 2, 3, "end_of_source")
    assert det.calls == 2


def test_stop_event_stops_cleanly(tmp_path):
    stop = threading.Event()
    frames = [(True, grey(1))] * 10000
    factory = factory_of(FakeCapture(frames, delay_s=0.001))
    s = run_stream(StreamConfig(source=1), detector=FakeDetector(), stop_event=stop, capture_factory=factory,
                   on_result=lambda i, r: stop.set() if i >= 20 else None)
    assert s.ended_by == "stopped" and 1 <= s.frames_scored and s.frames_read < 10000


def test_source_errors_and_config_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        run_stream(StreamConfig(source=str(tmp_path / "missing.mp4")), detector=FakeDetector())
    with pytest.raises(SourceError, match="cannot open camera source 7"):
        run_stream(StreamConfig(source=7), detector=FakeDetector(), capture_factory=factory_of())
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="holds no images"):
        run_stream(StreamConfig(source=str(tmp_path / "empty")), detector=FakeDetector())
    with pytest.raises(SourceError, match="delivered no frame"):
        run_stream(StreamConfig(source="x.mp4"), detector=FakeDetector(), capture_factory=factory_of(FakeCapture([])))
    with pytest.raises(ValueError, match="unknown class 'widget'"):
        run_stream(StreamConfig(source="x.mp4", class_name="widget"), detector=FakeDetector(),
                   capture_factory=factory_of(FakeCapture([(True, grey(1))])))
    with pytest.raises(ValueError, match="roi"):
        StreamConfig(source=0, roi=(0, 0, 0, 5))
    with pytest.raises(ValueError, match="1 <= N <= M"):
        StreamConfig(source=0, alarm=(5, 3))
    with pytest.raises(ValueError, match="does not exist"):
        StreamConfig(source=0, jsonl=str(tmp_path / "nowhere" / "e.jsonl"))


# ----------------------------------------------------------------------------- the CLI as a process


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_cli_unopenable_source_exits_2(trained_run, tmp_path, capsys):
    from hgad_edge.stream.cli import main

    assert main(["--source", str(tmp_path / "missing.mp4"), "--model", trained_run, "--headless"]) == 2
    assert "hgad-edge stream: error:" in capsys.readouterr().err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 1000)
    p = subprocess.run([sys.executable, "-m", "hgad_edge.stream", "--source", str(broken), "--model", trained_run,
                        "--headless"], capture_output=True, text=True, timeout=120, env=_env(), cwd=REPO)
    assert p.returncode == 2, p.stderr
    assert "hgad-edge stream: error: cannot open file source" in p.stderr and str(broken) in p.stderr


def test_cli_sigterm_stops_cleanly_with_a_summary(trained_run, images, tmp_path):
    video = write_video(tmp_path / "long.avi", [images[i % len(images)] for i in range(400)])
    jsonl = tmp_path / "events.jsonl"
    save = tmp_path / "out.mp4"
    p = subprocess.Popen([sys.executable, "-m", "hgad_edge.stream", "--source", video, "--model", trained_run,
                          "--headless", "--jsonl", str(jsonl), "--save", str(save), "--backend", "torch"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and p.poll() is None:
            if jsonl.exists() and len(frame_rows(read_jsonl(jsonl))) >= 3:
                break
            time.sleep(0.2)
        assert p.poll() is None, p.communicate()[1]
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "SIGTERM: stopping" in err and "stream summary" in out and "ended by stopped" in out
    rows = read_jsonl(jsonl)  # every line parses
    assert rows[-1]["type"] == "summary" and rows[-1]["ended_by"] == "stopped"
    n = len(frame_rows(rows))
    assert 3 <= n < 400 and rows[-1]["frames_scored"] == n and f"frames scored   {n}" in out
    assert len(read_video(save)) == n  # the writer was released: the mp4 is complete
