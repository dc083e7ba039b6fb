"""`hgad-edge stream` against hostile input and operator mistakes: an output never overwrites an
input, every bad number and camera index is one stderr line and exit code 2 before the model
loads, a text file is not a video, a frame the ROI does not fit and a corrupt stretch of a file
are counted bad frames (the stream goes on, the summary is written), and every JSON output is
strict (no bare NaN). No trained model is needed: the command line is refused before loading
one, and scoring runs on the FakeDetector of test_stream."""
from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest

from hgad_edge.result import Result
from hgad_edge.stream import StreamConfig, run_stream
from hgad_edge.stream import capture
from tests.integration.test_stream import FakeCapture, FakeDetector, conserved, factory_of, frame_rows, grey


def strict_rows(path):
    """The JSONL file's records; a bare NaN/Infinity fails (json.loads alone would accept it)."""
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token} in {path}")

    with open(path, encoding="utf-8") as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def mjpeg_avi(path, n=40, size=64):
    """An MJPEG AVI whose frame i is grey level 6*i (so a decoded frame tells its index)."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (size, size))
    assert w.isOpened()
    for i in range(n):
        w.write(np.full((size, size, 3), 6 * i, np.uint8))
    w.release()
    return str(path)


def avi_frame_chunks(data: bytes):
    """(offset of the payload, size) of every video chunk in the AVI's movi list, in order."""
    pos = data.index(b"movi") + 4
    out = []
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if cid == b"idx1" or cid == b"LIST":
            break
        if cid[2:] in (b"dc", b"db"):
            out.append((pos + 8, size))
        pos += 8 + size + (size & 1)
    return out


@pytest.fixture()
def sandbox(tmp_path, monkeypatch):
    """A folder with a video, image frames, a sources file and an empty 'model' folder (never
    loaded: every row must be refused before the model is)."""
    monkeypatch.chdir(tmp_path)
    video = mjpeg_avi(tmp_path / "line.avi", n=5)
    mjpeg_avi(tmp_path / "b.avi", n=5)
    (tmp_path / "frames").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "frames" / f"f{i}.png"), grey(40 * i))
    (tmp_path / "sources.json").write_text(json.dumps([{"id": "one", "source": "line.avi"}]))
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text("{}")
    os.symlink(video, tmp_path / "link.mp4")
    (tmp_path / "notes.txt").write_text("".join(f"line {i}: my notes, not a video\n" for i in range(200)))
    return tmp_path


def run_cli(argv, capfd):
    """``python -m hgad_edge.stream`` in process: (exit code, stderr lines incl. OpenCV's)."""
    from hgad_edge.stream.cli import main

    capfd.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    err = capfd.readouterr().err
    assert "Traceback" not in err
    return rc, [ln for ln in err.splitlines() if ln.strip()]


def refused(argv, capfd, words):
    rc, lines = run_cli(["--model", "model", "--headless", *argv], capfd)
    assert rc == 2 and len(lines) == 1, (rc, lines)
    assert any(w in lines[0] for w in words), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- outputs vs inputs

COLLISIONS = [  # (argv, the input that must survive, words the error names)
    (["--source", "line.avi", "--save", "line.avi"], "line.avi", ["--save"]),
    (["--source", "./line.avi", "--save", "../{dir}/line.avi"], "line.avi", ["--save"]),  # relative spellings
    (["--source", "link.mp4", "--save", "line.avi"], "line.avi", ["--save"]),  # through a symlink
    (["--source", "line.avi", "--save", "link.mp4"], "line.avi", ["--save"]),
    (["--source", "line.avi", "--jsonl", "line.avi"], "line.avi", ["--jsonl"]),
    (["--source", "line.avi", "--save", "out.mp4", "--jsonl", "out.mp4"], None, ["--save", "--jsonl"]),
    (["--sources", "sources.json", "--save", "sources.json"], "sources.json", ["--sources"]),
    (["--sources", "sources.json", "--jsonl", "sources.json"], "sources.json", ["--sources"]),
    (["--source", "line.avi", "--source", "b.avi", "--save", "{{source}}.avi"], "b.avi", ["--save"]),  # one of several
    (["--source", "frames", "--save", "frames/f1.png"], "frames/f1.png", ["--save"]),  # an image of a folder source
    (["--source", "line.avi", "--save", "model/model.json"], "model/model.json", ["--save model/model.json is the input"]),
    (["--source", "line.avi", "--save", "model"], None, ["folder"]),
]


@pytest.mark.parametrize("argv,keep,words", COLLISIONS, ids=[" ".join(c[0]) for c in COLLISIONS])
def test_an_output_never_overwrites_an_input_or_another_output(sandbox, capfd, argv, keep, words):
    argv = [a.format(dir=sandbox.name) for a in argv]
    before = sha(keep) if keep else None
    refused(argv, capfd, words)
    if keep:
        assert sha(keep) == before
    assert not os.path.exists("out.mp4")


# ----------------------------------------------------------------------------- numbers and camera indices

BAD_NUMBERS = [
    (["--threads", "0"], "threads"), (["--threads", "-4"], "threads"), (["--max-batch", "0"], "max_batch"),
    (["--max-batch", "-1"], "max_batch"), (["--max-frames", "0"], "max_frames"), (["--max-frames", "-3"], "max_frames"),
    (["--fps", "inf", "--save", "out.mp4"], "fps"), (["--fps", "nan"], "fps"), (["--fps", "0"], "fps"),
    (["--fps", "-25"], "fps"), (["--fps", "1e9", "--save", "out.mp4"], "fps"), (["--fps", "1e-6"], "fps"),
    (["--duration", "0"], "duration"), (["--duration", "-1"], "duration"), (["--duration", "inf"], "duration"),
    (["--duration", "nan"], "duration"), (["--target-fpr", "0"], "target_fpr"), (["--target-fpr", "1"], "target_fpr"),
    (["--target-fpr", "nan"], "target_fpr"), (["--reconnect-attempts", "-2"], "reconnect_attempts"),
    (["--reconnect-delay", "-1"], "reconnect_delay"), (["--reconnect-delay", "nan"], "reconnect_delay"),
    (["--reconnect-max-delay", "inf"], "reconnect_max_delay"), (["--event-queue", "0"], "--event-queue"),
    (["--event-queue", "-5"], "--event-queue"), (["--event-retries", "-1"], "--event-retries"),
    (["--progress-every", "-1"], "--progress-every"), (["--progress-every", "nan"], "--progress-every"),
    (["--serve-fps", "0"], "--serve-fps"), (["--serve-fps", "inf"], "--serve-fps"),
    (["--roi", "0,0,0,5"], "roi"), (["--roi", "0,0,-8,8"], "roi"), (["--roi", "-1,0,8,8"], "roi"),
    (["--roi", "0,0,8"], "roi"), (["--roi", "0,0,999999999,8"], "roi"),
    (["--roi", "0,0,65,8"], "roi"),  # wider than the 64x64 video: refused at start, before the model
    (["--threads", "many"], "--threads"), (["--save", "out.png"], "--save"), (["--save", "out"], "--save"),
]


@pytest.mark.parametrize("argv,word", BAD_NUMBERS, ids=[" ".join(b[0]) for b in BAD_NUMBERS])
def test_a_bad_number_is_one_line_before_the_model_loads(sandbox, capfd, argv, word):
    refused(["--source", "line.avi", *argv], capfd, [word])
    assert not os.path.exists("out.mp4")


@pytest.mark.parametrize("index", ["-1", "-2147483649", "100", "200", "99999999999", "1.5", "cam"])
def test_a_camera_index_opencv_cannot_mean_is_refused(sandbox, capfd, index):
    refused(["--camera", index], capfd, ["camera index must be an integer 0-99"])
    refused(["--sources", _sources(sandbox, [{"camera": int(index)}]) if index.lstrip("-").isdigit()
             else _sources(sandbox, [{"camera": index}])], capfd, ["camera"])


def test_a_camera_that_does_not_open_is_one_clear_line(sandbox, capfd):
    line = refused(["--camera", "97"], capfd, ["cannot open camera source 97"])
    assert "WARN" not in line  # OpenCV's own warnings are not printed on top


def _sources(root, entries):
    path = root / "cams.json"
    path.write_text(json.dumps(entries))
    return str(path)


# ----------------------------------------------------------------------------- not a video

def test_a_text_file_is_not_a_video(sandbox, capfd):
    cap = cv2.VideoCapture("notes.txt")  # FFmpeg itself would "play" it (its tty demuxer renders text)
    assert cap.isOpened() and cap.read()[0]
    cap.release()
    for name, content in [("notes.txt", None), ("notes.mp4", b"my notes\n" * 300), ("empty.avi", b""),
                          ("zeros.mp4", bytes(4096)), ("config.yaml", b"sources:\n  - camera: 0\n" * 50)]:
        if content is not None:
            (sandbox / name).write_bytes(content)
        refused(["--source", name], capfd, [f"cannot open file source '{name}'"])


def test_real_videos_and_images_are_recognised(tmp_path):
    frame = grey(90)
    for name, fourcc in [("a.avi", "MJPG"), ("a.mp4", "mp4v"), ("a.mkv", "MJPG"), ("f.avi", "FFV1")]:
        w = cv2.VideoWriter(str(tmp_path / name), cv2.VideoWriter_fourcc(*fourcc), 10.0, (32, 32))
        assert w.isOpened()
        w.write(frame)
        w.release()
        assert capture.file_format(str(tmp_path / name)) is not None, name
    for ext in (".png", ".jpg", ".bmp", ".tiff", ".webp"):
        cv2.imwrite(str(tmp_path / f"i{ext}"), frame)
        assert capture.file_format(str(tmp_path / f"i{ext}")) is not None, ext


# ----------------------------------------------------------------------------- frames the ROI does not fit

def test_a_later_frame_the_roi_does_not_fit_is_a_bad_frame_and_the_stream_goes_on(tmp_path):
    sizes = [64] * 4 + [32] * 3 + [40] + [64] * 4  # 32: outside; 40: only partly inside (never a clipped crop)
    frames = [(True, grey(10 * i, size=n)) for i, n in enumerate(sizes)]
    jsonl = tmp_path / "events.jsonl"
    det = FakeDetector()
    s = run_stream(StreamConfig(source="clip.mp4", roi=(0, 0, 48, 48), jsonl=str(jsonl), alarm=None), detector=det,
                   capture_factory=factory_of(FakeCapture(frames)))
    assert (s.ended_by, s.frames_read, s.frames_scored, s.bad_frames) == ("end_of_source", 12, 8, 4)
    assert s.bad_reasons == {"roi_outside_frame": 4} and conserved(s)
    rows = strict_rows(jsonl)
    assert [r["frame"] for r in frame_rows(rows)] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert rows[-1]["type"] == "summary" and rows[-1]["bad_reasons"] == {"roi_outside_frame": 4}


# ----------------------------------------------------------------------------- corrupt stretches

def test_a_corrupt_stretch_in_the_middle_of_a_video_is_read_past(tmp_path):
    path = mjpeg_avi(tmp_path / "corrupt.avi", n=40)
    data = bytearray(open(path, "rb").read())
    chunks = avi_frame_chunks(bytes(data))
    assert len(chunks) == 40
    rng = np.random.default_rng(0)
    for off, size in chunks[13:19]:  # frames 13-18: their JPEG payloads overwritten, the chunk headers kept
        data[off:off + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    open(path, "wb").write(bytes(data))
    jsonl = tmp_path / "events.jsonl"
    s = run_stream(StreamConfig(source=path, jsonl=str(jsonl), alarm=None), detector=FakeDetector())
    assert (s.ended_by, s.frames_read, s.frames_scored, s.bad_frames) == ("end_of_source", 40, 34, 6)
    assert s.bad_reasons == {"unreadable": 6}
    rows = frame_rows(strict_rows(jsonl))
    assert [r["frame"] for r in rows] == list(range(13)) + list(range(19, 40))
    # the frames after the stretch are the video's own (grey level 6*i: FakeDetector's raw score is the mean)
    assert all(abs(r["raw_score"] - 6 * r["frame"]) < 3 for r in rows)


class CountedCapture(FakeCapture):
    """A FakeCapture whose container says it has ``count`` frames."""

    def __init__(self, items, count):
        super().__init__(items)
        self.count = count

    def get(self, prop):
        return float(self.count) if prop == cv2.CAP_PROP_FRAME_COUNT else 0.0


def test_failed_reads_of_a_file_are_bad_frames_and_only_its_real_end_ends_it():
    items = [(True, grey(1))] * 5 + [(False, None)] * 3 + [OSError("decoder error")] + [(True, grey(2))] * 5
    s = run_stream(StreamConfig(source="clip.mp4", alarm=None), detector=FakeDetector(),
                   capture_factory=factory_of(CountedCapture(items, count=14)))
    assert (s.ended_by, s.frames_read, s.frames_scored, s.bad_frames) == ("end_of_source", 14, 10, 4)
    # a file that stops delivering before its container's frame count has not ended: source_lost
    items = [(True, grey(1))] * 5 + [(False, None)] * (capture.READ_FAILURES + 5) + [(True, grey(2))] * 5
    s = run_stream(StreamConfig(source="clip.mp4", alarm=None), detector=FakeDetector(),
                   capture_factory=factory_of(CountedCapture(items, count=40)))
    assert (s.ended_by, s.frames_read, s.frames_scored) == ("source_lost", 40, 5)
    assert s.bad_reasons == {"unreadable": 35} and conserved(s)
    # without a known count, the read-failure budget ends it (it never waits forever)
    s = run_stream(StreamConfig(source="clip.mp4", alarm=None), detector=FakeDetector(),
                   capture_factory=factory_of(FakeCapture(items)))
    assert (s.ended_by, s.frames_read, s.frames_scored) == ("end_of_source", 5, 5)


# ----------------------------------------------------------------------------- strict JSON everywhere

class NanDetector(FakeDetector):
    def __call__(self, frame, class_name=None):
        r = super().__call__(frame, class_name)
        return Result(score=math.nan, raw_score=math.nan, is_anomaly=True, anomaly_map=r.anomaly_map, mask=r.mask,
                      class_name="part", class_confidence=math.nan, threshold=math.inf,
                      timings_ms={"total": math.nan})


def test_nan_scores_are_null_in_every_output(tmp_path):
    from hgad_edge.stream.events import MqttSink, WebhookSink
    from hgad_edge.stream.view_state import LiveState

    bodies = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = WebhookSink(f"http://127.0.0.1:{server.server_address[1]}/", frames=True, retries=0)
    view = LiveState()
    jsonl = tmp_path / "events.jsonl"
    try:
        s = run_stream(StreamConfig(source="clip.mp4", jsonl=str(jsonl), alarm=(1, 1)), detector=NanDetector(),
                       capture_factory=factory_of(FakeCapture([(True, grey(200))] * 3)), sinks=[hook, view])
    finally:
        hook.close()
        server.shutdown()
    assert s.frames_scored == 3
    rows = strict_rows(jsonl)
    assert [r["score"] for r in frame_rows(rows)] == [None] * 3 and any(r["type"] == "alarm" for r in rows)
    assert len(bodies) == 4  # 3 anomalous frames + 1 alarm
    for text in bodies + [rec for _, _, rec in view.records]:
        json.loads(text, parse_constant=lambda t: pytest.fail(f"bare {t} in {text}"))

    class Client:  # paho's publish, recorded
        sent = []

        def is_connected(self):
            return True

        def publish(self, topic, payload, qos):
            self.sent.append(payload)
            return type("Info", (), {"wait_for_publish": lambda self, t: None, "is_published": lambda self: True})()

    mqtt = MqttSink.__new__(MqttSink)  # the delivery alone (no broker here; test_stream_events has a real one)
    mqtt._client, mqtt.topic, mqtt.qos, mqtt.timeout = Client(), "t", 1, 1.0
    mqtt._deliver(frame_rows(rows)[0] | {"score": math.nan})
    json.loads(Client.sent[0], parse_constant=lambda t: pytest.fail(f"bare {t} in MQTT payload"))
