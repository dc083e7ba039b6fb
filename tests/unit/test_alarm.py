"""N-of-M alarm debouncing: sequences of verdicts → exactly the expected alarm frames."""
import itertools
import random

import pytest

from hgad_edge.stream.alarm import AlarmDebouncer, alarm_frames, parse_alarm

T, F = True, False


@pytest.mark.parametrize("seq, n, m, expected", [
    ([], 3, 5, []),
    ([T, T, T], 3, 5, [2]),                                   # fewer than M frames seen: counts as they are
    ([T, T, F, F, F, T], 3, 5, []),                           # 3 anomalous, but never 3 within 5
    ([T, F, T, F, T], 3, 5, [4]),                             # exactly 3 of 5
    ([T, T, T, T, T, T, T, T], 3, 5, [2]),                    # one alarm per episode
    ([T, T, T, F, F, F, F, T, T, T], 3, 5, [2]),              # window never clear (a T within every 5): no re-arm
    ([T, T, T, F, F, F, F, F, T, T, T], 3, 5, [2, 10]),       # clear window (5 × F) re-arms
    ([T, T, T, F, F, F, F, F, T, T], 3, 5, [2]),              # re-armed but only 2 of 5 since
    ([T], 1, 1, [0]),
    ([T, T, F, T, F, T], 1, 1, [0, 3, 5]),                    # 1/1: every new run of anomalies alarms
    ([F, T, F, T, F, T, F, T], 2, 3, [3]),                    # flickering defect: still one episode
    ([T, F, F, F, T, F, F, F], 2, 4, []),
    ([F] * 10, 1, 3, []),
])
def test_alarm_sequences(seq, n, m, expected):
    assert alarm_frames(seq, n, m) == expected


def _brute_force(seq, n, m):
    """The specification, written without a running count."""
    out, active = [], False
    for i in range(len(seq)):
        window = seq[max(0, i - m + 1): i + 1]
        if active and not any(window):
            active = False
        elif not active and sum(window) >= n:
            active = True
            out.append(i)
    return out


def test_matches_brute_force_on_every_short_sequence():
    for n, m in [(1, 1), (1, 3), (2, 3), (3, 5), (5, 5)]:
        for seq in itertools.product((F, T), repeat=9):
            assert alarm_frames(seq, n, m) == _brute_force(seq, n, m), (seq, n, m)


def test_matches_brute_force_on_long_random_sequences():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(1, 6)
        m = rng.randint(n, 10)
        p = rng.random()
        seq = [rng.random() < p for _ in range(300)]
        assert alarm_frames(seq, n, m) == _brute_force(seq, n, m)


def test_state_fields_and_reset():
    d = AlarmDebouncer(2, 3)
    assert [d.update(v) for v in (T, T)] == [F, T]
    assert d.active and d.count == 2 and d.fired == 1
    d.reset()
    assert not d.active and d.count == 0 and d.fired == 1
    assert [d.update(v) for v in (T, T)] == [F, T] and d.fired == 2


@pytest.mark.parametrize("text, expected", [("3/5", (3, 5)), (" 1/1 ", (1, 1)), ("off", None), ("none", None)])
def test_parse_alarm(text, expected):
    assert parse_alarm(text) == expected


@pytest.mark.parametrize("text", ["3", "3/", "a/b", "6/5", "0/5", "3/5/7", "-1/2"])
def test_parse_alarm_rejects_with_a_clear_message(text):
    with pytest.raises(ValueError, match="N/M"):
        parse_alarm(text)


def test_debouncer_rejects_bad_n_m():
    with pytest.raises(ValueError, match="1 <= N <= M"):
        AlarmDebouncer(4, 3)
