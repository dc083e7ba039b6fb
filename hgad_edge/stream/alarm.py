"""Alarm debouncing for the stream: one alarm per episode of N anomalous frames out of M."""
from __future__ import annotations

from collections import deque
from typing import Deque, Iterable, List, Optional, Tuple


def parse_alarm(text: str) -> Optional[Tuple[int, int]]:
    """'3/5' → (3, 5); 'off' or 'none' → None.

    Raises:
        ValueError: not of the form N/M with 1 ≤ N ≤ M.
    """
    text = text.strip().lower()
    if text in ("off", "none", "0"):
        return None
    try:
        n_text, m_text = text.split("/")
        n, m = int(n_text), int(m_text)
    except ValueError as e:
        raise ValueError(f"alarm must look like N/M (e.g. 3/5) or 'off', got {text!r}") from e
    if not 1 <= n <= m:
        raise ValueError(f"alarm N/M needs 1 <= N <= M, got {n}/{m}")
    return n, m


class AlarmDebouncer:
    """N-of-M debouncer over per-frame verdicts.

    An alarm fires on the frame that makes at least ``n`` of the last ``m`` verdicts anomalous
    (fewer than ``m`` frames seen so far count as they are). It fires once per episode: while
    the alarm is active no further alarm fires; it re-arms once the window is clear, i.e. none
    of the last ``m`` verdicts is anomalous.

    Example:
        >>> d = AlarmDebouncer(2, 3)
        >>> [d.update(v) for v in (True, False, True, True, False, False, False, True, True)]
        [False, False, True, False, False, False, False, False, True]
    """

    def __init__(self, n: int, m: int):
        if not 1 <= n <= m:
            raise ValueError(f"alarm N/M needs 1 <= N <= M, got {n}/{m}")
        self.n, self.m = int(n), int(m)
        self._window: Deque[bool] = deque(maxlen=self.m)
        self.count = 0          # anomalous verdicts in the window
        self.active = False     # inside an alarm episode
        self.fired = 0          # alarms fired so far

    def update(self, is_anomaly: bool) -> bool:
        """Add one verdict; True when this frame fires an alarm."""
        if len(self._window) == self.m:
            self.count -= self._window[0]
        self._window.append(bool(is_anomaly))
        self.count += bool(is_anomaly)
        if self.active:
            if self.count == 0:
                self.active = False
            return False
        if self.count >= self.n:
            self.active = True
            self.fired += 1
            return True
        return False

    def reset(self) -> None:
        """Forget the window and any active episode (the count of fired alarms stays)."""
        self._window.clear()
        self.count = 0
        self.active = False


def alarm_frames(verdicts: Iterable[bool], n: int, m: int) -> List[int]:
    """Positions in ``verdicts`` where an ``n``-of-``m`` alarm fires."""
    d = AlarmDebouncer(n, m)
    return [i for i, v in enumerate(verdicts) if d.update(v)]
