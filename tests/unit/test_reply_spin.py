"""The sync single enqueue's reply wait: poll briefly, adaptively, one thread at a time."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor.backends.redis import _spin
from conveyor.backends.redis._spin import DEFAULT_BUDGET, ReplySpin
from conveyor.backends.redis._url import RedisOptions


class CountingPoll:
    """``select.poll`` that counts its polls and never reports the socket readable."""

    polls = 0

    def register(self, sock: Any, events: int) -> None:
        assert sock.fileno() >= 0

    def poll(self, timeout: int) -> list[tuple[int, int]]:
        CountingPoll.polls += 1
        return []


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[CountingPoll]]:
    CountingPoll.polls = 0
    monkeypatch.setattr(_spin.select, "poll", CountingPoll)
    yield CountingPoll


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_a_reply_already_there_ends_the_wait_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    b.sendall(b"+OK\r\n")
    spin = ReplySpin(budget=60.0)  # a wait that ran out its budget would hang the test
    spin.wait(a)
    assert a.recv(16) == b"+OK\r\n"


def test_polls_until_the_budget_is_spent(
    counted: type[CountingPoll], pair: tuple[socket.socket, socket.socket]
) -> None:
    ReplySpin(budget=0.002).wait(pair[0])
    assert counted.polls > 1


def test_slow_replies_turn_polling_off_and_quick_ones_on(
    counted: type[CountingPoll], pair: tuple[socket.socket, socket.socket]
) -> None:
    spin = ReplySpin(budget=0.001)
    for _ in range(30):
        spin.record(0.005)  # a server across a network: replies take 5 ms
    assert spin.average > spin.budget
    spin.wait(pair[0])
    assert counted.polls == 0
    for _ in range(60):
        spin.record(0.0001)
    assert spin.average < spin.budget
    spin.wait(pair[0])
    assert counted.polls > 0


def test_one_thread_polls_at_a_time(
    counted: type[CountingPoll], pair: tuple[socket.socket, socket.socket]
) -> None:
    spin = ReplySpin(budget=0.002)
    with spin._polling:  # another thread is polling
        done = threading.Event()
        threading.Thread(target=lambda: (spin.wait(pair[0]), done.set())).start()
        assert done.wait(10)
    assert counted.polls == 0


def test_never_polls_on_one_cpu(
    monkeypatch: pytest.MonkeyPatch,
    counted: type[CountingPoll],
    pair: tuple[socket.socket, socket.socket],
) -> None:
    monkeypatch.setattr(_spin.os, "cpu_count", lambda: 1)
    spin = ReplySpin(budget=0.002)
    assert spin.budget == 0
    spin.wait(pair[0])
    assert counted.polls == 0


def test_spin_us_in_the_url() -> None:
    assert RedisOptions.parse("redis://h/0").spin == DEFAULT_BUDGET
    assert RedisOptions.parse("redis://h/0?spin_us=0").spin == 0
    assert RedisOptions.parse("redis://h/0?spin_us=500").spin == pytest.approx(500e-6)
    # Conveyor's option, not passed on to redis-py
    assert "spin_us" not in RedisOptions.parse("redis://h/0?spin_us=500").client_url
    for bad in ("-1", "abc", "0.5", "20000"):
        with pytest.raises(ValueError, match=r"spin_us=.*whole number of microseconds"):
            RedisOptions.parse(f"redis://h/0?spin_us={bad}")
