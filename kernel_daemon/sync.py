"""Sleeping in the kernel: one wait-queue type, and the invalidate lock built on it.

A system call that must wait never blocks the single-threaded loop: it sleeps on a
:class:`WaitQueue` (Linux's ``wait_queue_head_t``; gVisor's ``waiter.Queue``; trio's
``ParkingLot``), which raises :class:`~kernel_daemon.errors.MustWait` out of the
handler.  The dispatcher parks the call with the queue and, when someone calls
:meth:`WaitQueue.wake_one` or :meth:`WaitQueue.wake_all`, runs it again from the start
(or ``resume``, the rest of the call, when the sleeper gave one), as the kernel's loop
around ``schedule()`` looks at the condition again.  A new blocking call is three
lines::

    if not box.queue:
        box.readers.sleep()              # recvmsg runs again when woken
    msg = box.queue.popleft()

``abort`` runs when the sleep ends without the call resuming (EINTR, the caller's
death) and undoes what the call holds.  ``timeout`` arms a timer that wakes the sleeper
(after ``on_timeout``), as ``wait_event_interruptible_timeout`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, NoReturn, TypeVar

from kemu.kernel_daemon.errors import MustWait

if TYPE_CHECKING:
    from types import TracebackType

    from kemu.kernel_daemon.kernel import Kernel
    from kemu.kernel_daemon.task import Task

T = TypeVar("T")


@dataclass(eq=False)
class _Entry(Generic[T]):
    """One sleeper (``wait_queue_entry``): how to wake it, and what it waits as."""

    wake: Callable[[], None]
    data: T | None


class WaitQueue(Generic[T]):
    """``wait_queue_head_t``: the sleepers on one condition, in the order they came.

    ``T`` is what a sleeper records about itself (a lease breaker's task and mode, shown
    in ``/proc/locks``); plain queues record nothing.
    """

    def __init__(self) -> None:
        self._entries: list[_Entry[T]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __iter__(self) -> Iterator[T]:
        """What each sleeper recorded, in order (sleepers that recorded nothing skipped)."""
        return (e.data for e in list(self._entries) if e.data is not None)

    def sleep(self, data: T | None = None, *, resume: Callable[[], object] | None = None,
              abort: Callable[[], None] | None = None,
              timeout: tuple[Kernel, float] | None = None,
              on_timeout: Callable[[], None] | None = None) -> NoReturn:
        """Put the current call to sleep on this queue (``prepare_to_wait`` +
        ``schedule``).  Never returns: the handler is left by :class:`MustWait`.

        ``timeout`` is ``(kernel, seconds)``: the sleeper is woken then, after
        ``on_timeout`` ran (a lease's deadline forces the lease first).
        """

        def register(wake: Callable[[], None]) -> Callable[[], None]:
            entry = _Entry(wake, data)
            self._entries.append(entry)
            timer = None
            if timeout is not None:
                k, delay = timeout

                def expire() -> None:
                    if on_timeout is not None:
                        on_timeout()
                    wake()

                timer = k.add_timer(max(0.0, delay), expire)

            def unregister() -> None:
                if entry in self._entries:
                    self._entries.remove(entry)
                if timer is not None:
                    timer.cancel()

            return unregister

        raise MustWait(register, resume, abort)

    def wake_one(self) -> bool:
        """Wake the sleeper that came first (``wake_up`` of an exclusive waiter)."""
        if not self._entries:
            return False
        self._entries.pop(0).wake()
        return True

    def wake_all(self) -> int:
        """Wake every sleeper (``wake_up_all``); returns how many there were."""
        entries, self._entries = self._entries, []
        for entry in entries:
            entry.wake()
        return len(entries)


@dataclass(eq=False)
class _Hold:
    task: Task
    first: int
    end: int | None


class InvalidateLock:
    """``mapping->invalidate_lock`` (``filemap_invalidate_lock``) of one inode.

    While a process changes pages ``[first, end)`` of the file (truncate, hole punch,
    reflink), page faults of *other* processes in that range sleep, so they cannot bring
    back a translation that is being taken away (without it a process storing in a loop
    re-faults the pages after each shoot-down and the change never ends).  Taken with
    ``with inode.invalidate_lock.hold(task, first, end):``; a call that sleeps inside
    keeps it (the sleep is part of the change) and gives it back when it ends, is
    interrupted or its process dies.
    """

    def __init__(self) -> None:
        self._holders: dict[int, _Hold] = {}
        #: faults waiting for a change of their page to end
        self.waiters: WaitQueue[None] = WaitQueue()

    def __len__(self) -> int:
        return len(self._holders)

    def hold(self, task: Task, first: int, end: int | None) -> _Held:
        """The lock over ``[first, end)`` for ``task``, as a context manager."""
        return _Held(self, task, first, end)

    def lock(self, task: Task, first: int, end: int | None) -> None:
        """Take (or, for the same process, widen to) the range."""
        self._holders[task.pid] = _Hold(task, first, end)

    def unlock(self, task: Task) -> None:
        """The change is done: faults waiting on the range go on."""
        if self._holders.pop(task.pid, None) is not None:
            self.waiters.wake_all()

    def wait_for(self, task: Task, page: int) -> None:
        """A fault of ``task`` on ``page``: sleep while another process changes it."""
        for hold in self._holders.values():
            if hold.task is not task and page >= hold.first and (hold.end is None
                                                                  or page < hold.end):
                self.waiters.sleep()


class _Held:
    """The context manager of :meth:`InvalidateLock.hold`."""

    def __init__(self, lock: InvalidateLock, task: Task, first: int, end: int | None) -> None:
        self.lock, self.task, self.first, self.end = lock, task, first, end

    def __enter__(self) -> InvalidateLock:
        self.lock.lock(self.task, self.first, self.end)
        return self.lock

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, MustWait):
            # the change sleeps (shoot-downs): keep the range; give it back if the
            # call never resumes
            lock, task = self.lock, self.task
            exc.add_abort(lambda: lock.unlock(task))
            return
        self.lock.unlock(self.task)
