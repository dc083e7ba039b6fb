"""What the live view shows, fed by the stream loop: per source the latest frame record, a
score history, the newest annotated JPEG; the alarm list; a ring of recent records for the
server-sent events. ``LiveState`` is the sink the loop calls (``start``, ``record``,
``wants_image``, ``image``); ``server.WebView`` serves it over HTTP.

Nothing here blocks the loop: ``record`` appends under a lock, ``image`` replaces the one frame
waiting for the encoder thread (drop, never queue), and frames are taken at all only while a
viewer asked for that source in the last few seconds, at most ``serve_fps`` per source.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from hgad_edge.fileio import dumps

log = logging.getLogger("hgad_edge.stream.server")
VIEWER_TTL_S = 3.0      # a source counts as viewed this long after its last frame request
MAX_JPEG_WIDTH = 960    # larger frames are scaled down for the page
HISTORY_POINTS = 1500   # per source, over history_s


class _SourceView:
    """What the page shows of one source (updated by the loop's thread, read by the server's)."""

    def __init__(self, sid: str, history_s: float):
        self.id = sid
        self.last: Optional[Dict[str, Any]] = None
        self.summary: Optional[Dict[str, Any]] = None
        self.history: Deque[List[float]] = deque(maxlen=HISTORY_POINTS)
        self.bucket_s = history_s / HISTORY_POINTS
        self.pending: Optional[tuple] = None   # annotate() args of the newest frame to encode
        self.offered = 0.0                      # when the last frame was taken for encoding
        self.viewed = 0.0                       # when a viewer last asked for a frame
        self.jpeg: Optional[bytes] = None
        self.seq = 0                            # JPEGs encoded so far

    def add_point(self, t: float, score: float, anomalous: bool) -> None:
        """One point per bucket of the plot (the highest score in it, anomalous if any was)."""
        b = int(t / self.bucket_s) if self.bucket_s > 0 else t
        if self.history and self.history[-1][3] == b:
            p = self.history[-1]
            p[1], p[2] = max(p[1], score), max(p[2], float(anomalous))
        else:
            self.history.append([round(t, 3), score, float(anomalous), b])


class LiveState:
    """The view's state and the stream sink that feeds it.

    Args:
        serve_fps: at most this many JPEGs per source and second, only while someone views it.
        history_s: span of the score plot.
        jpeg_quality: of the encoded frames.
        extra_status: callables whose results are added to ``status()`` (event output stats).
    """

    def __init__(self, serve_fps: float = 5.0, history_s: float = 300.0, jpeg_quality: int = 80,
                 extra_status: Optional[Dict[str, Callable[[], Any]]] = None):
        if not serve_fps > 0:
            raise ValueError(f"serve_fps must be > 0, got {serve_fps}")
        self.serve_fps, self.history_s, self.jpeg_quality = serve_fps, history_s, jpeg_quality
        self.extra_status = dict(extra_status or {})
        self.info: Dict[str, Any] = {}
        self.views: Dict[str, _SourceView] = {}
        self.alarms: Deque[Dict[str, Any]] = deque(maxlen=200)
        self.records: Deque[Tuple[int, str, str]] = deque(maxlen=2000)  # (seq, type, json)
        self.record_seq = 0
        self.encoded = 0
        self.started = time.time()
        self._status: Callable[[], List[Dict[str, Any]]] = lambda: []
        self._lock = threading.Lock()
        self._encode_wake = threading.Event()
        self._encoder: Optional[threading.Thread] = None
        self._closing = False
        self._wake_pending = False

    def _wake_records(self) -> None:
        """A record arrived (the server wakes its event streams)."""

    def _wake_frames(self) -> None:
        """A JPEG was encoded (the server wakes its frame requests)."""

    def start_encoder(self) -> None:
        self._encoder = threading.Thread(target=self._encode_loop, name="hgad-web-jpeg", daemon=True)
        self._encoder.start()

    def stop_encoder(self) -> None:
        self._closing = True
        self._encode_wake.set()
        if self._encoder is not None:
            self._encoder.join(5)

    def start(self, info: Dict[str, Any]) -> None:
        with self._lock:
            self.info = {k: v for k, v in info.items() if k != "status"}
            self._status = info.get("status") or self._status
            for s in info.get("sources", []):
                self.views.setdefault(s["id"], _SourceView(s["id"], self.history_s))

    def record(self, rec: Dict[str, Any]) -> None:
        sid = rec.get("source")
        with self._lock:
            view = self.views.get(sid)
            kind = rec.get("type")
            if view is not None and kind == "frame":
                view.last = rec
                view.add_point(rec["time"], rec["score"], rec["is_anomaly"])
            elif view is not None and kind == "summary":
                view.summary = rec
            elif kind == "alarm":
                self.alarms.append(rec)
            self.record_seq += 1
            self.records.append((self.record_seq, str(kind), dumps(rec)))
            wake = not self._wake_pending
            self._wake_pending = True
        if wake and not self._closing:
            self._wake_records()  # at most one pending: bounded

    def wants_image(self, sid: str) -> bool:
        view = self.views.get(sid)
        now = time.monotonic()
        return (view is not None and now - view.viewed < VIEWER_TTL_S
                and now - view.offered >= 1.0 / self.serve_fps)

    def image(self, sid: str, args: tuple) -> None:
        """Take the newest frame to encode (replacing one not yet encoded: drop, never queue)."""
        view = self.views[sid]
        view.pending, view.offered = args, time.monotonic()
        self._encode_wake.set()

    def _encode_loop(self) -> None:
        import cv2

        from hgad_edge.stream.outputs import annotate

        while not self._closing:
            self._encode_wake.wait(1.0)
            self._encode_wake.clear()
            for view in list(self.views.values()):
                args, view.pending = view.pending, None
                if args is None or self._closing:
                    continue
                try:
                    img = annotate(*args)
                    if img.shape[1] > MAX_JPEG_WIDTH:
                        h = round(img.shape[0] * MAX_JPEG_WIDTH / img.shape[1])
                        img = cv2.resize(img, (MAX_JPEG_WIDTH, max(1, h)), interpolation=cv2.INTER_AREA)
                    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
                except Exception as e:  # noqa: BLE001 (a drawing bug must not end the view)
                    log.warning("web view: frame of %s not encoded: %s", view.id, e)
                    continue
                if ok:
                    view.jpeg, view.seq = buf.tobytes(), view.seq + 1
                    self.encoded += 1
                    if not self._closing:
                        self._wake_frames()

    def records_after(self, cursor: int) -> List[Tuple[int, str, str]]:
        """The buffered records newer than ``cursor`` (a viewer that fell behind gets a gap)."""
        with self._lock:
            return [r for r in self.records if r[0] > cursor]

    def status(self, history: bool = True) -> Dict[str, Any]:
        live = {s["id"]: s for s in self._status()}
        with self._lock:
            now = time.time()
            sources = []
            for sid, view in self.views.items():
                entry = dict(live.get(sid, {"id": sid}))
                entry["last"] = view.last
                entry["summary"] = view.summary
                entry["jpeg_seq"] = view.seq
                if history:
                    entry["history"] = [p[:3] for p in view.history if p[0] >= now - self.history_s]
                sources.append(entry)
            out = {**self.info, "time": now, "uptime_s": round(now - self.started, 3), "serve_fps": self.serve_fps,
                   "history_s": self.history_s, "sources": sources, "alarms": list(self.alarms)[::-1],
                   "jpegs_encoded": self.encoded}
        for name, fn in self.extra_status.items():
            out[name] = fn()
        return out

