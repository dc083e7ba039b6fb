"""Event outputs of the stream: alarms (and optionally anomalous frames) to a webhook or MQTT.

Each sink has a bounded queue and one worker thread: ``record`` (called by the inference loop)
only appends under a lock, never waits; when the queue is full the *oldest* event is dropped
and counted. The worker delivers with retries and exponential backoff; an event that still
fails is counted as failed. The payload is the record as the JSONL log has it (with ``source``).
"""
from __future__ import annotations

import abc
import logging
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional

from hgad_edge.fileio import dumps
from hgad_edge.stream.capture import END, FrameBuffer
from hgad_edge.version import __version__

log = logging.getLogger("hgad_edge.stream.events")
DEFAULT_TOPIC = "hgad_edge/events"


class PermanentError(RuntimeError):
    """A delivery failure that retrying cannot fix (e.g. HTTP 400/404)."""


class EventSink(abc.ABC):
    """A bounded queue of events and a worker thread that delivers them (``_deliver``).

    Args:
        name: for logs and stats.
        frames: also send every anomalous ``frame`` record (default: alarms only).
        queue_size: events held while the endpoint is slow or down; the oldest is dropped.
        retries: further attempts per event after the first failed one.
        backoff, max_backoff: first retry delay (s), doubled up to ``max_backoff``.
    """

    def __init__(self, name: str, frames: bool = False, queue_size: int = 1000, retries: int = 5,
                 backoff: float = 0.5, max_backoff: float = 10.0):
        if queue_size < 1 or retries < 0 or backoff < 0 or max_backoff < backoff:
            raise ValueError("need queue_size >= 1, retries >= 0 and 0 <= backoff <= max_backoff")
        self.name, self.frames = name, frames
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.queue = FrameBuffer(queue_size, drop=True)
        self.halt = threading.Event()
        self.sent = self.failed = self.retried = self.abandoned = 0
        self._thread = threading.Thread(target=self._run, name=f"hgad-events-{name}", daemon=True)
        self._started = False
        self.start_worker()

    # ------------------------------------------------------------------ the loop's side
    def wants(self, rec: Dict[str, Any]) -> bool:
        t = rec.get("type")
        return t == "alarm" or (self.frames and t == "frame" and bool(rec.get("is_anomaly")))

    def record(self, rec: Dict[str, Any]) -> None:
        """Queue ``rec`` if it is an event of this sink; never blocks."""
        if self.wants(rec):
            self.queue.put(rec, self.halt)

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def stats(self) -> Dict[str, int]:
        return {"sent": self.sent, "failed": self.failed, "retried": self.retried, "dropped": self.dropped,
                "queued": len(self.queue), "abandoned": self.abandoned}

    # ------------------------------------------------------------------ the worker
    def start_worker(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get(0.5)
            if item is END:
                return
            if item is not None:
                self._send(item)

    def _send(self, rec: Dict[str, Any]) -> None:
        attempt = 0
        while True:
            try:
                self._deliver(rec)
                self.sent += 1
                return
            except PermanentError as e:
                self.failed += 1
                log.warning("%s: %s event not delivered: %s", self.name, rec.get("type"), e)
                return
            except Exception as e:  # noqa: BLE001 (network errors of every kind are retried)
                attempt += 1
                if attempt > self.retries or self.halt.is_set():
                    self.failed += 1
                    log.warning("%s: %s event not delivered after %d attempt(s): %s", self.name, rec.get("type"),
                                attempt, e)
                    return
                self.retried += 1
                delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
                log.info("%s: delivery failed (%s); retry %d/%d in %.1f s", self.name, e, attempt, self.retries, delay)
                if self.halt.wait(delay):
                    self.failed += 1
                    return

    @abc.abstractmethod
    def _deliver(self, rec: Dict[str, Any]) -> None:
        """Send one record; raise ``PermanentError`` for a refusal not worth retrying."""

    def close(self, timeout: float = 5.0) -> Dict[str, int]:
        """Deliver what is queued for up to ``timeout`` seconds, then give up (counted as
        ``abandoned``); returns the stats."""
        if self._started:
            self.queue.close()
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.halt.set()  # ends a retry wait at once
                self._thread.join(2.0)
            self.abandoned = len(self.queue)
        self._disconnect()
        s = self.stats()
        log.info("%s: %d sent, %d failed, %d retried, %d dropped (queue full), %d abandoned at exit", self.name,
                 s["sent"], s["failed"], s["retried"], s["dropped"], s["abandoned"])
        return s

    def _disconnect(self) -> None:
        pass


class WebhookSink(EventSink):
    """POSTs each event as JSON (``Content-Type: application/json``) to ``url``.

    Connection errors, timeouts, HTTP 5xx and 429 are retried; other HTTP errors are not."""

    def __init__(self, url: str, timeout: float = 5.0, **kwargs):
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"--webhook needs an http:// or https:// URL, got {url!r}")
        super().__init__(f"webhook {parsed.scheme}://{parsed.netloc}", **kwargs)
        self.url, self.timeout = url, timeout
        # urllib (standard library) rather than a client library: one blocking POST per event on
        # the worker thread needs nothing more, and no dependency for the default install.
        self._opener = urllib.request.build_opener()

    def _deliver(self, rec: Dict[str, Any]) -> None:
        req = urllib.request.Request(self.url, data=dumps(rec).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": f"hgad_edge/{__version__}"})
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as e:
            if e.code >= 500 or e.code == 429:
                raise ConnectionError(f"HTTP {e.code}") from None
            raise PermanentError(f"HTTP {e.code} {e.reason}") from None


def parse_host_port(text: str, default_port: int) -> tuple:
    """'host', 'host:port', '[::1]:port' → (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    try:
        p = int(port) if port else default_port
    except ValueError:
        raise ValueError(f"port must be a number, got {text!r}") from None
    if not host or not 0 <= p <= 65535:
        raise ValueError(f"expected HOST[:PORT], got {text!r}")
    return host, p


class MqttSink(EventSink):
    """Publishes each event as JSON to ``topic`` on an MQTT broker (paho-mqtt, ``hgad_edge[mqtt]``).

    paho's network thread keeps the connection and reconnects (1 s doubling to 30 s); an event
    is published only while connected (QoS 1 by default: the broker acknowledges it) and retried
    with backoff otherwise. Credentials: ``HGAD_MQTT_USERNAME`` / ``HGAD_MQTT_PASSWORD``."""

    def __init__(self, broker: str, topic: str = DEFAULT_TOPIC, qos: int = 1, timeout: float = 5.0,
                 client_id: Optional[str] = None, **kwargs):
        try:
            import paho.mqtt.client as mqtt  # lazy: an optional extra
        except ImportError:
            raise ImportError("--mqtt needs paho-mqtt: pip install 'hgad_edge[mqtt]'") from None
        host, port = parse_host_port(broker, 1883)
        if qos not in (0, 1, 2):
            raise ValueError(f"MQTT QoS must be 0, 1 or 2, got {qos}")
        if not topic or any(c in topic for c in "+#") or "\0" in topic:
            raise ValueError(f"MQTT topic must be non-empty without wildcards (+, #), got {topic!r}")
        super().__init__(f"mqtt {host}:{port}", **kwargs)
        self.topic, self.qos, self.timeout = topic, qos, timeout
        self._client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=client_id or f"hgad_edge-{os.getpid()}")
        user = os.environ.get("HGAD_MQTT_USERNAME")
        if user:
            self._client.username_pw_set(user, os.environ.get("HGAD_MQTT_PASSWORD"))
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.max_queued_messages_set(self.queue.capacity)
        self._client.connect_async(host, port, keepalive=30)
        self._client.loop_start()

    def _deliver(self, rec: Dict[str, Any]) -> None:
        if not self._client.is_connected():
            raise ConnectionError("not connected to the broker")
        info = self._client.publish(self.topic, dumps(rec), qos=self.qos)
        info.wait_for_publish(self.timeout)
        if not info.is_published():
            raise TimeoutError(f"not acknowledged within {self.timeout:g} s")

    def _disconnect(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
