"""Event outputs: a webhook against a local HTTP server that fails its first requests (retries),
one that hangs (the stream does not wait; drops are counted), and a real MQTT broker (Debian's
mosquitto on a loopback port) fed by a real stream process."""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hgad_edge.stream import MultiStreamConfig, SourceSpec, run_sources
from hgad_edge.stream.events import MqttSink, WebhookSink
from tests.integration.stream_model import onnx_copy
from tests.integration.test_stream import REPO, FakeCapture, FakeDetector, factory_of, grey, read_jsonl, write_video


class Hook:
    """A local webhook endpoint: answers ``fail_first`` requests with 503, then 200; with a
    ``gate`` every request waits until it is set."""

    def __init__(self, fail_first=0, gate=None):
        self.bodies, self.calls, self.fail_first, self.gate = [], 0, fail_first, gate
        self.arrived = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.calls += 1
                hook.arrived.set()
                if hook.gate is not None:
                    hook.gate.wait(30)
                if hook.calls <= hook.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                assert self.headers["Content-Type"] == "application/json"
                hook.bodies.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def alternating(n):
    """Frames anomalous every other one: with alarm 1/1 every anomalous frame fires an alarm."""
    return [(True, grey(200 if i % 2 else 10)) for i in range(n)]


def test_webhook_retries_until_delivered(tmp_path):
    hook = Hook(fail_first=2)
    sink = WebhookSink(hook.url, retries=5, backoff=0.05, max_backoff=0.2, frames=True)
    jsonl = tmp_path / "e.jsonl"
    try:
        cfg = MultiStreamConfig(sources=(SourceSpec("press1", "a.mp4", alarm=(1, 1)),), jsonl=str(jsonl))
        run_sources(cfg, detector=FakeDetector(), capture_factory=factory_of(FakeCapture(alternating(12))),
                    sinks=[sink])
        stats = sink.close(timeout=10)
    finally:
        hook.close()
    rows = read_jsonl(jsonl)
    events = [r for r in rows if r["type"] == "alarm" or (r["type"] == "frame" and r["is_anomaly"])]
    assert len([r for r in events if r["type"] == "alarm"]) == 6
    assert hook.bodies == events  # every alarm and anomalous frame, in order, exactly as logged
    assert all(b["source"] == "press1" for b in hook.bodies)
    assert stats["sent"] == len(events) and stats["retried"] == 2 and stats["failed"] == 0
    assert stats["dropped"] == 0 and hook.calls == len(events) + 2


class GatedCapture(FakeCapture):
    """Waits, before its third frame, until the webhook's first request has arrived."""

    def __init__(self, items, arrived):
        super().__init__(items)
        self.arrived, self.reads = arrived, 0

    def read(self):
        self.reads += 1
        if self.reads == 3:
            assert self.arrived.wait(10)
        return super().read()


def test_a_hanging_webhook_never_blocks_the_stream_and_drops_are_counted(tmp_path):
    gate = threading.Event()
    hook = Hook(gate=gate)
    sink = WebhookSink(hook.url, queue_size=3, timeout=30)
    n_alarms = 20
    try:
        cfg = MultiStreamConfig(sources=(SourceSpec("press1", "a.mp4", alarm=(1, 1)),))
        cap = GatedCapture(alternating(2 * n_alarms), hook.arrived)
        s = run_sources(cfg, detector=FakeDetector(), capture_factory=factory_of(cap), sinks=[sink])
        # the whole stream was scored while the endpoint still held the first alarm
        assert not gate.is_set() and hook.calls == 1 and s.sources[0].frames_scored == 2 * n_alarms
        assert s.sources[0].alarms == n_alarms
        assert sink.dropped == n_alarms - 1 - 3  # one in flight, the newest three queued
        gate.set()
        stats = sink.close(timeout=10)
    finally:
        gate.set()
        hook.close()
    assert stats["sent"] == 4 and stats["dropped"] == 16 and stats["failed"] == 0
    frames = [b["frame"] for b in hook.bodies]
    assert frames == [1, 35, 37, 39]  # the first (in flight), then the newest three


def test_webhook_url_is_checked():
    with pytest.raises(ValueError, match="http:// or https://"):
        WebhookSink("ftp://example.com/x")
    with pytest.raises(ValueError, match="http:// or https://"):
        WebhookSink("localhost:8080")


# ----------------------------------------------------------------------------- MQTT


def _mosquitto():
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker(tmp_path):
    exe = _mosquitto()
    if not exe:
        pytest.skip("Debian's mosquitto is not installed and could not be (.ci/run installs it with apt-get as root)")
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("mosquitto did not start: " + proc.communicate()[0].decode()[-1000:])
    yield port
    proc.terminate()
    proc.wait(10)


def subscriber(port, topic):
    import paho.mqtt.client as mqtt

    got, ready = [], threading.Event()
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="hgad-test-sub")
    c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
    c.on_subscribe = lambda *_: ready.set()
    c.on_message = lambda _c, _u, msg: got.append((msg.topic, json.loads(msg.payload)))
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert ready.wait(10), "no SUBACK from mosquitto"
    return c, got


@pytest.fixture(scope="module")
def onnx_run(trained_run, tmp_path_factory):
    return onnx_copy(trained_run, tmp_path_factory)


def test_mqtt_stream_process_publishes_every_alarm(broker, onnx_run, demo_root, tmp_path):
    from hgad_edge import data

    samples = data.test_samples(demo_root, data.resolve_classes(demo_root, None))
    images = [data.read_image(s.path) for s in samples]
    va = write_video(tmp_path / "a.avi", [images[i % len(images)] for i in range(30)])
    vb = write_video(tmp_path / "b.avi", [images[(5 * i + 2) % len(images)] for i in range(30)])
    sub, got = subscriber(broker, "plant/line3/#")
    jsonl = tmp_path / "e.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        p = subprocess.run([sys.executable, "-m", "hgad_edge.stream", "--model", onnx_run, "--backend", "onnxruntime",
                            "--threads", "1", "--source", va, "--source", vb, "--headless", "--jsonl", str(jsonl),
                            "--alarm", "1/2", "--mqtt", f"127.0.0.1:{broker}", "--mqtt-topic", "plant/line3/hgad",
                            "--progress-every", "0"], capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
        assert p.returncode == 0, p.stderr[-3000:]
        alarms = [r for r in read_jsonl(jsonl) if r["type"] == "alarm"]
        deadline = time.time() + 10
        while len(got) < len(alarms) and time.time() < deadline:
            time.sleep(0.05)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert alarms and {a["source"] for a in alarms} == {"a", "b"}
    assert [m for _, m in got] == alarms and {t for t, _ in got} == {"plant/line3/hgad"}
    assert f"{len(alarms)} sent, 0 failed" in p.stderr


class Relay:
    """A TCP relay to the broker that starts listening only when told: until then the port
    refuses connections, as a broker that is down does; then it forwards to the real one."""

    def __init__(self, port, upstream):
        self.port, self.upstream, self.sock = port, upstream, None

    def start(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        if self.sock is not None:
            self.sock.close()


def test_mqtt_events_wait_for_the_broker_and_are_delivered_once_when_it_comes(broker):
    sub, got = subscriber(broker, "t/hgad")
    relay = Relay(_free_port(), broker)  # the sink's broker address: down for now
    sink = MqttSink(f"127.0.0.1:{relay.port}", topic="t/hgad", retries=20, backoff=0.2, max_backoff=0.5)
    try:
        for i in range(3):  # queued and retried, never blocking
            t0 = time.perf_counter()
            sink.record({"type": "alarm", "source": "s", "frame": i})
            assert time.perf_counter() - t0 < 0.05
        time.sleep(0.6)
        assert sink.sent == 0 and sink.retried >= 1 and not got
        relay.start()  # the broker comes up (paho reconnects by itself, 1 s after its last try)
        deadline = time.time() + 20
        while sink.sent < 3 and time.time() < deadline:
            time.sleep(0.05)
        stats = sink.close(timeout=5)
        deadline = time.time() + 5
        while len(got) < 3 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a duplicate would arrive now
    finally:
        sub.loop_stop()
        sub.disconnect()
        relay.close()
    assert stats["sent"] == 3 and stats["failed"] == 0 and stats["dropped"] == 0
    assert [m["frame"] for _, m in got] == [0, 1, 2]  # each exactly once: nothing was queued twice while down
