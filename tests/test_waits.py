"""The answer queue: places, wait estimates, refusing up front, and leaving the line."""

from __future__ import annotations

import threading

import pytest

from rag.chat.waiting import AnswerQueue, Place, QueueFull
from rag.errors import RagError


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def start(ticket) -> None:
    """Drive a ticket's wait() to its turn (it must be its turn already)."""
    assert list(ticket.wait(poll=0.01)) == []


def test_an_empty_queue_starts_at_once():
    q = AnswerQueue(slots=1, typical_s=30)
    assert q.estimate() == Place(0, 0.0)
    start(q.enter())
    assert len(q) == 1


def test_estimates_count_the_answers_ahead_per_slot():
    clock = Clock()
    q = AnswerQueue(slots=1, max_wait=1000, typical_s=30, clock=clock)
    running = q.enter()
    start(running)
    clock.t += 10  # the answer in progress has run 10 of its typical 30 s
    assert q.estimate() == Place(1, 20.0)
    q.enter()
    q.enter()
    assert q.estimate() == Place(3, 20.0 + 2 * 30)
    two = AnswerQueue(slots=2, max_wait=1000, typical_s=30, clock=clock)
    start(two.enter())
    assert two.estimate() == Place(0, 0.0)  # a slot is still free
    start(two.enter())
    two.enter()
    assert two.estimate() == Place(3, 30.0)  # one round ahead once a slot frees


def test_an_answer_running_long_still_leaves_a_positive_estimate():
    clock = Clock()
    q = AnswerQueue(slots=1, typical_s=30, clock=clock)
    start(q.enter())
    clock.t += 500
    assert q.estimate().wait_s == pytest.approx(3.0)


def test_a_wait_over_the_limit_is_refused_with_the_estimate():
    q = AnswerQueue(slots=1, max_wait=100, typical_s=30, clock=Clock())
    start(q.enter())
    q.enter()
    q.enter()  # wait 30 + 30 = 60: admitted
    q.enter()  # 30 + 60 = 90: admitted
    with pytest.raises(QueueFull) as err:
        q.enter()  # 30 + 90 = 120 > 100
    assert err.value.place == Place(4, 120.0) and err.value.max_wait == 100
    assert isinstance(err.value, RagError) and "RAG_MAX_WAIT=100s" in str(err.value)


def test_the_typical_answer_time_is_learnt_from_recorded_answers():
    clock = Clock()
    q = AnswerQueue(slots=1, typical_s=30, clock=clock)
    for seconds in (4, 6, 100):
        t = q.enter()
        start(t)
        clock.t += seconds
        t.done()
    assert q.typical() == 6  # the median: one slow answer does not swing it
    t = q.enter()
    start(t)
    clock.t += 1
    t.done(record=False)  # a failed answer does not count
    assert q.typical() == 6


def test_waiting_tickets_see_their_place_and_start_in_order():
    q = AnswerQueue(slots=1, typical_s=1)
    first = q.enter()
    start(first)
    order, places = [], []

    def waiter(name: str, ticket) -> None:
        for place in ticket.wait(poll=0.01):
            places.append((name, place.ahead))
        order.append(name)
        ticket.done()

    second, third = q.enter(), q.enter()
    threads = [threading.Thread(target=waiter, args=("second", second)),
               threading.Thread(target=waiter, args=("third", third))]
    for th in threads:
        th.start()
    first.done()
    for th in threads:
        th.join(5)
    assert order == ["second", "third"]
    assert ("second", 1) in places and ("third", 2) in places
    assert len(q) == 0


def test_a_question_that_leaves_while_waiting_frees_its_place():
    q = AnswerQueue(slots=1, typical_s=10, clock=Clock())
    start(q.enter())
    leaving = q.enter()
    waits = leaving.wait(poll=0.01)
    assert next(waits).ahead == 1
    waits.close()  # the browser tab was closed
    leaving.done(record=False)
    assert q.estimate().ahead == 1 and len(q) == 1
