"""Generator stages run in threads and joined by bounded queues: `stream(source, stage, stage, ...)`.

    with stream(read_frames(info), detect, restore, paste, maxsize=4) as frames:
        for item in frames:
            encode(item)                               # in the calling thread

Each stage is a function from an iterator of items to an iterator of items (so a stage may gather
several items into one batch). The source and every stage run in a thread of their own; a queue of at
most `maxsize` items sits between two of them, so memory does not grow with the stream's length and
the stages overlap (decoding, the detector, the model and the encoder work at the same time).

The first exception in any thread stops every stage and is raised in the calling thread; leaving the
`with` block early (an error there, Ctrl-C) stops them too. Threads blocked on a full or empty queue notice
within a tenth of a second; one busy in a long computation is waited for at most `join_timeout`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator

_END = object()
_POLL = 0.1


class _Stopped(Exception):
    """Raised inside a stage's thread when the stream was stopped."""


class Stream:
    def __init__(self, source: Iterable, stages: tuple[Callable[[Iterator], Iterator], ...], maxsize: int):
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.queues = [queue.Queue(maxsize) for _ in range(len(stages) + 1)]
        producers = [lambda: source] + [
            (lambda stage, inbox: lambda: stage(self._drain(inbox)))(stage, inbox)
            for stage, inbox in zip(stages, self.queues, strict=False)
        ]
        self.threads = [
            threading.Thread(target=self._run, args=(produce, outbox), daemon=True, name=f"stream-stage-{k}")
            for k, (produce, outbox) in enumerate(zip(producers, self.queues, strict=True))
        ]

    def _put(self, box: queue.Queue, item) -> None:
        while not self.stop.is_set():
            try:
                box.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue
        raise _Stopped

    def _drain(self, box: queue.Queue) -> Iterator:
        while True:
            try:
                item = box.get(timeout=_POLL)
            except queue.Empty:
                if self.stop.is_set():
                    raise _Stopped from None
                continue
            if item is _END:
                return
            yield item

    def _run(self, produce: Callable[[], Iterable], outbox: queue.Queue) -> None:
        try:
            for item in produce():
                self._put(outbox, item)
            self._put(outbox, _END)
        except _Stopped:
            pass
        except BaseException as error:  # raised in the calling thread
            self.errors.append(error)
            self.stop.set()

    def __iter__(self) -> Iterator:
        for thread in self.threads:
            thread.start()
        try:
            yield from self._drain(self.queues[-1])
        except _Stopped:
            pass
        finally:
            self.close()
        if self.errors:
            raise self.errors[0]

    def __enter__(self) -> Iterator:
        return iter(self)

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self, join_timeout: float = 5.0) -> None:
        self.stop.set()
        for thread in self.threads:
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(join_timeout)


def stream(source: Iterable, *stages: Callable[[Iterator], Iterator], maxsize: int = 4) -> Stream:
    """The items of `source` through `stages`, each in its own thread (see the module's docstring)."""
    if maxsize < 1:
        raise ValueError(f"maxsize must be at least 1, got {maxsize}")
    return Stream(source, stages, maxsize)
