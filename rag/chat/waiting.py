"""Waiting in line for the model: queue position, an estimated wait, and refusing up front.

The local model answers one question at a time, so under a burst most questions
wait. `AnswerQueue` admits them in arrival order, `slots` at a time; tells each
waiting one how many questions are ahead of it and about how long it will wait
(the typical answer time of recent answers, times the answers still to start
before it, per slot); and refuses a question at once, with that estimate, when
the wait would exceed `max_wait` (RAG_MAX_WAIT), instead of letting it wait for
minutes with no word. It knows nothing of web servers: the chat words the messages.

Left out: priorities or fairness between users, and cancelling an answer already
being written (a question that leaves the line while waiting frees its place).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rag.errors import RagError


@dataclass(frozen=True)
class Place:
    """Where a question stands: `ahead` questions will be answered (or are being answered) before it
    starts, in about `wait_s` seconds."""

    ahead: int
    wait_s: float


class QueueFull(RagError):
    """The estimated wait is over the limit; the chat words it for its users."""

    def __init__(self, place: Place, max_wait: float) -> None:
        super().__init__(f"the model is busy: {place.ahead} questions are ahead of this one, about "
                         f"{place.wait_s:.0f}s of answering, over the RAG_MAX_WAIT={max_wait:g}s limit; try again later")
        self.place = place
        self.max_wait = max_wait


class AnswerQueue:
    """A first-come, first-served line for `slots` concurrent answers, with wait estimates."""

    def __init__(self, slots: int = 1, max_wait: float = 300.0, typical_s: float = 30.0, window: int = 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.slots = slots
        self.max_wait = max_wait
        self.initial_typical = typical_s  # until answers have been timed
        self._clock = clock
        self._cond = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._running: dict[Ticket, float] = {}  # ticket -> start time
        self._recent: deque[float] = deque(maxlen=window)

    def typical(self) -> float:
        """Seconds a recent answer took (the median of the last `window`), or the initial guess."""
        return statistics.median(self._recent) if self._recent else self.initial_typical

    def _place(self, waiting_ahead: int) -> Place:
        """Where a question with `waiting_ahead` others before it in line stands (lock held)."""
        running = len(self._running)
        if running < self.slots and waiting_ahead == 0:
            return Place(0, 0.0)
        typical, now = self.typical(), self._clock()
        if running >= self.slots:
            # The first slot frees when the oldest answer ends: its typical length less the time it has run
            # (at least a tenth of it, as an answer that runs long may run longer still).
            oldest = min(self._running.values())
            first_free = max(typical * 0.1, typical - (now - oldest))
        else:
            first_free = 0.0
        rounds = waiting_ahead // self.slots
        return Place(running + waiting_ahead, first_free + rounds * typical)

    def estimate(self) -> Place:
        """Where a question arriving now would stand."""
        with self._cond:
            return self._place(len(self._waiting))

    def enter(self) -> Ticket:
        """Join the line; raises QueueFull (with the estimate) when the wait would exceed `max_wait`."""
        with self._cond:
            place = self._place(len(self._waiting))
            if place.wait_s > self.max_wait:
                raise QueueFull(place, self.max_wait)
            ticket = Ticket(self)
            self._waiting.append(ticket)
            return ticket

    def _turn(self, ticket: Ticket) -> bool:
        return bool(self._waiting) and self._waiting[0] is ticket and len(self._running) < self.slots

    def _start(self, ticket: Ticket) -> None:
        self._waiting.popleft()
        self._running[ticket] = self._clock()

    def _leave(self, ticket: Ticket, record: bool) -> None:
        with self._cond:
            if ticket in self._running:
                started = self._running.pop(ticket)
                if record:
                    self._recent.append(self._clock() - started)
            elif ticket in self._waiting:
                self._waiting.remove(ticket)
            self._cond.notify_all()

    def __len__(self) -> int:
        """Questions in line or being answered."""
        with self._cond:
            return len(self._waiting) + len(self._running)


class Ticket:
    """One question's place in an AnswerQueue. Iterate `wait()` until it is its turn, answer, then `done()`
    (also when it gives up while waiting: its place is freed)."""

    def __init__(self, queue: AnswerQueue) -> None:
        self.queue = queue

    def wait(self, poll: float = 1.0) -> Iterator[Place]:
        """Yield this question's place every `poll` seconds while it waits; return when it may start."""
        q = self.queue
        while True:
            with q._cond:
                if q._turn(self):
                    q._start(self)
                    return
                place = q._place(q._waiting.index(self))
            yield place
            with q._cond:
                if not q._turn(self):
                    q._cond.wait(poll)

    def done(self, record: bool = True) -> None:
        """Leave the line; `record` counts this answer's time towards the typical answer time."""
        self.queue._leave(self, record)
