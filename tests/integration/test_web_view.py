"""The live web view: its security (static route, token, bind address, Host header, read-only),
JPEG encoding only for viewers, and a real browser (Debian's chromium driven by selenium) on the
page of a real stream process over two file sources."""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hgad_edge.result import Result
from hgad_edge.stream.server import ASSETS, WebView, parse_serve
from tests.integration.stream_model import onnx_copy
from tests.integration.test_stream import REPO, frame_rows, read_jsonl, write_video

TOKEN = "s3cret-token-for-tests"


def get(port, path, headers=None, method="GET", host=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
        if host is not None:
            c.putheader("Host", host)
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def fake_status():
    return [{"id": "cam1", "state": "running", "frames_read": 3, "frames_scored": 3, "frames_dropped": 0,
             "bad_frames": 0, "reconnects": 0, "fps": 10.0, "latency_p50_ms": 5.0, "latency_p99_ms": 6.0}]


def serving(token=None, host="127.0.0.1", serve_fps=5.0):
    v = WebView(host, 0, token=token, serve_fps=serve_fps)
    v.start({"backend": "fake", "max_batch": 1, "sources": [{"id": "cam1", "url": "x.mp4"}], "status": fake_status})
    v.start_server()
    return v


@pytest.fixture
def view():
    v = serving(token=TOKEN)
    yield v
    v.close()


AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROTECTED = os.path.join(REPO, "hgad_edge", "stream", "server.py")


@pytest.mark.parametrize("path", [
    "/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2f..%2fetc%2fpasswd",
    "/server.py", "/web/../server.py", "/%2e%2e/server.py", "/web/%2e%2e/server.py", "/app.js/../../server.py",
    "/app.js%2f..%2f..%2fserver.py", "//etc/passwd", "/index.html%00.py", "/..\\..\\server.py",
    "/static/../../setup.py", "/web/app.js", "/hgad_edge/stream/web/app.js", "/api/../../../setup.py",
    "/api/frame/../../../etc/passwd", "/%252e%252e/%252e%252e/etc/passwd", "/app.js?../../server.py"])
def test_static_route_never_serves_a_file_outside_its_assets(view, path):
    status, _, body = get(view.port, path, AUTH)
    assets = {view.assets[name] for name, _ in ASSETS.values()}
    assert status == 404 or body in assets, (path, status, body[:80])
    assert b"root:x:0:0" not in body and b"def parse_serve" not in body and b"setup(" not in body
    with open(PROTECTED, "rb") as f:
        assert f.read()[:200] not in body


def test_every_route_needs_the_token(view):
    for path in ("/", "/index.html", "/app.js", "/style.css", "/favicon.svg", "/api/status", "/api/events",
                 "/api/frame?source=cam1", "/nothing-here"):
        for headers in ({}, {"Authorization": "Bearer wrong-token-xx"}, {"Cookie": "hgad_token=wrong-token-xx"},
                        {"Authorization": f"Basic {TOKEN}"}):
            status, hdrs, body = get(view.port, path, headers)
            assert status == 401, (path, headers, status)
            assert TOKEN.encode() not in body and "WWW-Authenticate" in hdrs
        status, _, _ = get(view.port, path + ("&" if "?" in path else "?") + "token=wrong-token-xx")
        assert status == 401
    status, _, body = get(view.port, "/api/status?history=0", AUTH)
    assert status == 200 and json.loads(body)["sources"][0]["id"] == "cam1"
    status, hdrs, _ = get(view.port, f"/?token={TOKEN}")  # the link to open once: a cookie, then /
    assert status == 303 and hdrs["Location"] == "/"
    cookie = hdrs["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, hdrs, body = get(view.port, "/", {"Cookie": cookie.split(";")[0]})
    assert status == 200 and b"hgad_edge live view" in body and "script-src 'self'" in hdrs["Content-Security-Policy"]


def test_read_only_and_loopback_by_default(view):
    for path in ("/", "/api/status", "/api/frame?source=cam1", "/api/events"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            status, _, _ = get(view.port, path, AUTH, method=method)
            assert status == 405, (method, path, status)
    assert parse_serve("8080") == ("127.0.0.1", 8080) and parse_serve("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert WebView().host == "127.0.0.1"
    assert view._runner.addresses[0][0] == "127.0.0.1"
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_serve("localhost")
    with pytest.raises(ValueError, match="at least 8"):
        WebView(token="short")
    # reachable from this machine only: another address of the box gets no answer
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent; it picks the outgoing interface
        own = probe.getsockname()[0]
    except OSError:
        own = "127.0.0.1"
    finally:
        probe.close()
    if not own.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((own, view.port), timeout=2).close()


def test_without_a_token_only_loopback_host_names_are_served():
    v = serving(token=None)
    try:
        assert get(v.port, "/api/status", host=f"127.0.0.1:{v.port}")[0] == 200
        assert get(v.port, "/api/status", host=f"localhost:{v.port}")[0] == 200
        for host in (f"evil.example:{v.port}", "attacker.test", f"192.168.1.5:{v.port}"):  # DNS rebinding
            assert get(v.port, "/api/status", host=host)[0] == 421, host
    finally:
        v.close()


def _result(level):
    amap = np.full((32, 32), level / 255.0, np.float32)
    return Result(score=level / 255.0, raw_score=level, is_anomaly=level > 128, anomaly_map=amap, mask=amap > 0.5,
                  class_name="part", class_confidence=1.0, threshold=128.0, timings_ms={"total": 1.0})


def test_jpegs_are_encoded_only_for_viewers_and_at_most_serve_fps(view):
    frame = np.full((32, 32, 3), 90, np.uint8)
    for _ in range(50):  # nobody watches: nothing is taken for encoding
        assert not view.wants_image("cam1")
    assert view.encoded == 0
    status, _, _ = get(view.port, "/api/frame?source=cam1", AUTH)  # a viewer (waits 2 s: no frame yet)
    assert status == 204
    taken, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < 1.0:  # the loop offers a frame every 5 ms
        if view.wants_image("cam1"):
            view.image("cam1", (frame, _result(90), (0, 0, 32, 32), 10.0, 5.0, False))
            taken += 1
        time.sleep(0.005)
    assert 1 <= taken <= 5 * 1.0 + 1  # --serve-fps 5
    deadline = time.monotonic() + 5
    while view.encoded < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    status, hdrs, body = get(view.port, "/api/frame?source=cam1&after=0", AUTH)
    assert status == 200 and hdrs["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    assert int(hdrs["X-Frame-Seq"]) >= 1 and view.encoded <= taken
    assert get(view.port, "/api/frame?source=nope", AUTH)[0] == 404


# ----------------------------------------------------------------------------- a real browser


def _chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path, shutil.which("chromedriver") or ("/usr/bin/chromedriver"
                                                          if os.path.exists("/usr/bin/chromedriver") else None)
    return None, None


@pytest.fixture(scope="module")
def onnx_run(trained_run, tmp_path_factory):
    return onnx_copy(trained_run, tmp_path_factory)


@pytest.fixture(scope="module")
def images(demo_root):
    from hgad_edge import data

    samples = data.test_samples(demo_root, data.resolve_classes(demo_root, None))
    return [data.read_image(s.path) for s in samples]


class _Lines(threading.Thread):
    """Collects a pipe's lines as they come."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.lines = pipe, []
        self.start()

    def run(self):
        for line in iter(self.pipe.readline, ""):
            self.lines.append(line)


def test_real_browser_shows_both_sources_live(onnx_run, images, tmp_path):
    browser, driver_path = _chromium()
    if not browser or not driver_path:
        pytest.skip("Debian's chromium and chromium-driver are not installed and could not be (.ci/run installs "
                    "them with apt-get as root); the browser test needs them")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (pip install 'hgad_edge[test]')")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    n = 240
    va = write_video(tmp_path / "line_a.avi", [images[i % len(images)] for i in range(n)])
    vb = write_video(tmp_path / "line_b.avi", [images[(i * 7 + 3) % len(images)] for i in range(n)])
    jsonl = tmp_path / "events.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HGAD_SERVE_TOKEN": TOKEN,
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "hgad_edge.stream", "--model", onnx_run, "--backend", "onnxruntime",
                             "--threads", "1", "--source", va, "--source", vb, "--realtime", "--fps", "8",
                             "--headless", "--jsonl", str(jsonl), "--alarm", "1/2", "--serve", "127.0.0.1:0",
                             "--serve-fps", "4", "--progress-every", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    err = _Lines(proc.stderr)
    driver = None
    try:
        deadline = time.time() + 90
        url = None
        while url is None and time.time() < deadline and proc.poll() is None:
            url = next((ln.split("live view: ", 1)[1].strip() for ln in err.lines if "live view: " in ln), None)
            time.sleep(0.1)
        assert url, "".join(err.lines)[-3000:]
        assert url.startswith("http://127.0.0.1:")
        opts = webdriver.ChromeOptions()
        opts.binary_location = browser
        for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,820"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=Service(driver_path), options=opts)
        driver.get(url + f"?token={TOKEN}")
        wait = WebDriverWait(driver, 60, poll_frequency=0.2)
        tiles_js = """return Array.from(document.querySelectorAll('.tile')).map(t => ({
            id: t.dataset.source, seq: Number(t.querySelector('img.live').dataset.seq),
            w: t.querySelector('img.live').naturalWidth, frame: t.dataset.frame,
            score: t.querySelector('.score').textContent, state: t.dataset.state}))"""
        wait.until(lambda d: len(d.execute_script(tiles_js)) == 2
                   and all(t["seq"] >= 1 and t["w"] > 0 for t in d.execute_script(tiles_js)))
        first = {t["id"]: t["seq"] for t in driver.execute_script(tiles_js)}
        assert set(first) == {"line_a", "line_b"}
        wait.until(lambda d: all(t["seq"] >= first[t["id"]] + 2 for t in d.execute_script(tiles_js)))  # updating
        shown = []
        for _ in range(3):
            shown += [t for t in driver.execute_script(tiles_js) if t["frame"] is not None]
            time.sleep(0.6)
        wait.until(lambda d: d.execute_script("return document.querySelectorAll('#alarms li').length") >= 1)
        alarm_texts = driver.execute_script(
            "return Array.from(document.querySelectorAll('#alarms li')).map(li => li.textContent)")
        driver.save_screenshot(str(tmp_path / "web_view.png"))
        if os.environ.get("HGAD_WEB_SCREENSHOT"):
            shutil.copyfile(tmp_path / "web_view.png", os.environ["HGAD_WEB_SCREENSHOT"])
        assert (tmp_path / "web_view.png").stat().st_size > 10000
        status = json.loads(driver.execute_script(
            "return fetch('/api/status?history=0').then(r => r.text())"))  # the page's cookie is enough
        assert {s["id"] for s in status["sources"]} == {"line_a", "line_b"} and status["jpegs_encoded"] >= 6
    finally:
        if driver is not None:
            driver.quit()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(err.lines)[-3000:]
    rows = read_jsonl(jsonl)
    frames = {(r["source"], r["frame"]): r for r in frame_rows(rows)}
    assert len(shown) >= 6
    for t in shown:  # the score on the page is the one in the event log, for that very frame
        assert f"{frames[(t['id'], int(t['frame']))]['score']:.3f}" == t["score"]
    alarms = [r for r in rows if r["type"] == "alarm"]
    assert alarms and len(alarm_texts) <= len(alarms)
    for text in alarm_texts:
        assert any(f"{a['source']}: {a['anomalous']} of {a['window']} frames anomalous, frame {a['frame']}," in text
                   for a in alarms), text
    assert "run summary (2 sources" in out
