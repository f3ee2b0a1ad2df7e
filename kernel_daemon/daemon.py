"""The daemon's event loop: one thread, never blocking, one message at a time.

One ZeroMQ ROUTER socket carries every agent's calls; an epoll set holds the
registration listener, registration connections in progress and one pidfd per
registered process, so a death (SIGKILL included) is seen at once and costs nothing per
unrelated process.  Timers live in the kernel's heap; the poll sleeps until the next
one.  Calls that must wait are parked and answered later.  Because the loop handles one
message at a time, every run has a total order of kernel events: the event log.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import secrets
import select
import signal
import socket
import struct
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import zmq

from kemu.kernel_daemon import conns, mm, qp
from kemu.kernel_daemon.boot import boot, describe
from kemu.kernel_daemon.errors import KernelError, MustWait
from kemu.kernel_daemon.eventlog import EventLog
from kemu.kernel_daemon.kernel import Config, Timer, real_ppid
from kemu.kernel_daemon.syscalls import SYSCALLS, BadArguments, Syscall
from kemu.kernel_daemon.syscalls.proc import RegistrationRefused, register
from kemu.kernel_daemon.task import Task
from kemu.protocol import linux, wire
from kemu.protocol.errors import ProtocolError

log = logging.getLogger("kernel_daemon")

_UCRED = struct.Struct("3i")
#: messages handled per wake-up before the poll is consulted again (fairness)
BATCH = 64
# plain ints: pyzmq's enum members cost a conversion on every use
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVMORE = int(zmq.RCVMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
#: seconds a registration connection may take to send its hello
REGISTRATION_TIMEOUT = 5.0
#: registration connections in progress at once; more wait in the listen backlog
MAX_PENDING_REGISTRATIONS = 64
#: calls one process may have sleeping in the kernel at once (each would be a thread of
#: its own on Linux); the next one that must sleep is EAGAIN, as clone() past
#: RLIMIT_NPROC
MAX_PARKED = 1024


@dataclass
class _Registration:
    sock: socket.socket
    reader: wire.RecordReader
    timer: Timer


@dataclass(eq=False)
class Peer:
    """The wire-protocol side of a registered process: what authenticates its frames.

    The kernel's :class:`~kernel_daemon.task.Task` knows nothing of it.  ``secret`` is
    None between the announcement of an exec and the new image's registration, when no
    message is accepted.
    """

    secret: bytes | None
    #: highest control-message sequence number accepted (replay guard)
    last_seq: int = -1
    #: sequence number of the last frame sent to the process
    out_seq: int = 0
    #: the ZeroMQ routing id of the agent's DEALER socket (learnt from its messages)
    route: bytes | None = None
    #: drop the secret once the reply to the call being dispatched went out (exec)
    revoke: bool = False


class Daemon:
    """The kernel daemon of one run directory."""

    def __init__(self, config: Config) -> None:
        self.config = config
        conns.raise_nofile()  # every descriptor the hard limit allows (docs/protocol.md)
        os.makedirs(config.run_dir, exist_ok=True)
        # Everything of a run is its launcher's user's alone: the folder 0700 (whoever
        # made it), the sockets 0600, the device a 0600 segment (protocol/shm.py), a
        # queue pair's ring and pipes nameless (qp.py).  Another user cannot list the
        # run, connect to its daemon or map its device.
        os.chmod(config.run_dir, 0o700)
        self.endpoint = f"ipc://{os.path.join(config.run_dir, 'kernel.ipc')}"
        self.register_path = os.path.join(config.run_dir, "register.sock")
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.MAXMSGSIZE, 16 * wire.MAX_FRAME)
        self.router.bind(self.endpoint)
        os.chmod(os.path.join(config.run_dir, "kernel.ipc"), 0o600)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.register_path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.register_path)
        os.chmod(self.register_path, 0o600)
        self.listener.listen(256)
        self.listener.setblocking(False)
        self.ep = select.epoll()
        self.fd_handlers: dict[int, Callable[[], None]] = {}
        self._watch(self.listener.fileno(), self._accept)
        # The ROUTER's FD is edge-triggered: it says "look at ZMQ_EVENTS", so the loop
        # drains the socket until EVENTS shows no input before it sleeps again.
        self.router_fd = int(self.router.get(zmq.FD))
        self.ep.register(self.router_fd, select.EPOLLIN)
        self.registrations: dict[int, _Registration] = {}
        self.listener_paused = False
        #: pidfd -> pid of a registered process
        self.pidfds: dict[int, int] = {}
        self.restarts: list[Callable[[], None]] = []
        self.evlog = EventLog(config.event_log, config.event_log_max)
        #: the wire-protocol record of every registered process, by PID
        self.peers: dict[int, Peer] = {}
        self.kernel = boot(config, self, self.evlog)
        self.evlog.emit("boot", pid=os.getpid(), policy=config.policy, flavour=config.flavour,
                        nblocks=config.nblocks, block_size=config.block_size,
                        lease_break_time=config.lease_break_time, pmem=self.kernel.pmem.name,
                        clock=self.evlog.t0)
        self.stats = {"messages": 0, "protocol_errors": 0}
        self.guard = conns.ConnectionGuard(
            self.router, self.endpoint, lambda pid: pid in self.kernel.tasks,
            self.kernel.add_timer, config.max_unregistered, REGISTRATION_TIMEOUT)
        self._watch(self.guard.fd, self.guard.drain)
        self.kernel.notify_handlers["interrupt"] = self._interrupt

    # --- epoll registry ---------------------------------------------------------------

    def _watch(self, fd: int, handler: Callable[[], None]) -> None:
        self.ep.register(fd, select.EPOLLIN)
        self.fd_handlers[fd] = handler

    def _unwatch(self, fd: int) -> None:
        self.fd_handlers.pop(fd, None)
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(fd)

    def watch_fd(self, fd: int, handler: Callable[[], None]) -> None:
        """Call ``handler`` from the loop whenever ``fd`` is readable (a doorbell)."""
        self._watch(fd, handler)

    def unwatch_fd(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed)."""
        self._unwatch(fd)

    # --- the loop ---------------------------------------------------------------------

    def serve(self, ready_fd: int | None = None) -> None:
        """Run until SIGTERM or SIGINT; ``ready_fd`` gets a line once serving."""

        # The handler only sets a flag, which the loop reads between steps.  It used to
        # raise an exception to leave the loop, but a handler runs wherever the main
        # thread is, and an exception raised inside a C-level finaliser (pyzmq's
        # Frame.__dealloc__) is printed and dropped: the daemon went on serving, never
        # stopped, and was killed after 10 s (seen in explore's S06 runs).
        stopping: list[int] = []

        def stop(signum: int, frame: FrameType | None) -> None:
            stopping.append(signum)

        # A signal landing just before the poll sleeps would otherwise wait for the next
        # message: the wake-up fd makes the poll return so the handler runs at once.
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        self._watch(wake_r.fileno(), lambda: _drain(wake_r))
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        if ready_fd is not None:
            os.write(ready_fd, f"ready {os.getpid()} {self.kernel.pmem.name}\n".encode())
            os.close(ready_fd)
        try:
            while not stopping:
                self.step()
        finally:
            signal.set_wakeup_fd(-1)
            self._unwatch(wake_r.fileno())
            wake_r.close()
            wake_w.close()
            self.close()

    def step(self, timeout: float | None = None) -> None:
        """One iteration: wait for input or the next timer, then handle what came."""
        while self.restarts:
            self._guarded(self.restarts.pop(0))
        busy = self._drain_router() or bool(self.restarts)
        self.guard.drain()  # edge-triggered like the ROUTER: looked at every time round
        # after the messages: handling them may have set timers (a breaker's deadline)
        deadline = 0.0 if busy else self.kernel.next_deadline()
        if timeout is not None:
            deadline = timeout if deadline is None else min(deadline, timeout)
        for fd, _ in self.ep.poll(-1 if deadline is None else deadline + 0.0005):
            handler = self.fd_handlers.get(fd)
            if handler is not None:
                self._guarded(handler)
        self._guarded(self.kernel.run_timers)

    def _guarded(self, callback: Callable[[], None]) -> None:
        """Run a loop callback (a death, a timer); a bug in it is logged, not fatal."""
        try:
            callback()
        except Exception:
            detail = traceback.format_exc(limit=8)
            log.error("bug in a loop callback: %s", detail)
            self.evlog.emit("bug", detail=detail)

    def close(self) -> None:
        """Release sockets, the device and the run directory's socket files."""
        self.evlog.emit("shutdown")
        self.evlog.close()
        for reg in list(self.registrations.values()):
            reg.sock.close()
        for pidfd in list(self.pidfds):
            os.close(pidfd)
        self.guard.close()
        self.router.close(0)
        self.ctx.destroy(linger=0)  # term() would wait for any socket left open
        self.listener.close()
        self.ep.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.register_path)
        self.kernel.shutdown()

    # --- registration (AF_UNIX, SO_PEERCRED) ------------------------------------------

    def _accept(self) -> None:
        while True:
            if len(self.registrations) >= MAX_PENDING_REGISTRATIONS:
                self._pause_listener()
                return
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: wait for a slot
                log.warning("registration accept failed: %s", exc)
                self._pause_listener()
                return
            conn.setblocking(False)
            fd = conn.fileno()
            timer = self.kernel.add_timer(REGISTRATION_TIMEOUT, functools.partial(self._drop_reg, fd))
            self.registrations[fd] = _Registration(conn, wire.RecordReader(), timer)
            self._watch(fd, functools.partial(self._registration_input, fd))

    def _pause_listener(self) -> None:
        """Stop accepting until a registration connection closes (never spin)."""
        if self.listener_paused:
            return
        self.listener_paused = True
        self._unwatch(self.listener.fileno())
        if not self.registrations:  # nothing will close: retry on a timer
            self.kernel.add_timer(0.1, self._resume_listener)

    def _resume_listener(self) -> None:
        if self.listener_paused:
            self.listener_paused = False
            self._watch(self.listener.fileno(), self._accept)

    def _drop_reg(self, fd: int) -> None:
        reg = self.registrations.pop(fd, None)
        if reg is None:
            return
        reg.timer.cancel()
        self._unwatch(fd)
        reg.sock.close()
        self._resume_listener()

    def _registration_input(self, fd: int) -> None:
        reg = self.registrations[fd]
        try:
            data = reg.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._drop_reg(fd)
            return
        if not data:
            self._drop_reg(fd)
            return
        fds: list[int] = []
        qpn: Any = None
        try:
            hello = reg.reader.feed(data)
            if hello is None:
                return
            wire.check_version(hello.get("v"))
            if hello.get("kind") == wire.ATTACH_QP:
                qpn = hello.get("qpn")
                answer, fds = self._attach_qp(reg.sock, qpn)
            elif hello.get("kind") == wire.ATTACH_MM:
                answer, fds = self._attach_mm(reg.sock)
            else:
                answer = self._register(reg.sock, hello)
        except ProtocolError as exc:
            self.stats["protocol_errors"] += 1
            answer = {"v": list(wire.PROTOCOL_VERSION), "ok": False,
                      "reason": exc.reason, "detail": exc.detail}
        except RegistrationRefused as exc:
            answer = {"v": list(wire.PROTOCOL_VERSION), "ok": False,
                      "reason": exc.reason, "detail": exc.detail}
        except Exception:  # a daemon bug: refuse this one, keep serving the rest
            log.error("bug in registration: %s", traceback.format_exc(limit=8))
            answer = {"v": list(wire.PROTOCOL_VERSION), "ok": False,
                      "reason": wire.E_MALFORMED, "detail": "registration failed"}
        with contextlib.suppress(OSError):
            if fds:
                socket.send_fds(reg.sock, [wire.encode_record(answer)], fds)
                if qpn is not None:
                    qp.handed_out(self.kernel, int(qpn))
            else:
                reg.sock.send(wire.encode_record(answer))
        self._drop_reg(fd)

    def _attach_qp(self, sock: socket.socket, qpn: Any) -> tuple[dict[str, Any], list[int]]:
        """An ``attach-qp`` record: the creator of queue pair ``qpn`` (the caller as
        ``SO_PEERCRED`` names it) takes its ring and pipes by descriptor."""
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        pid, _, _ = _UCRED.unpack(creds)
        try:
            fds = qp.attach(self.kernel, pid, qpn)
        except KernelError as exc:
            return ({"v": list(wire.PROTOCOL_VERSION), "ok": False, "reason": "refused",
                     "errno": exc.errno, "detail": exc.detail or os.strerror(exc.errno)}, [])
        return {"v": list(wire.PROTOCOL_VERSION), "ok": True, "qpn": qpn,
                "fds": ["ring", "db", "cq"]}, fds

    def _attach_mm(self, sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
        """An ``attach-mm`` record: the caller (``SO_PEERCRED``), a registered process,
        takes its TLB word (``kernel_daemon/mm.py`` :class:`TlbWord`) by descriptor."""
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        pid, _, _ = _UCRED.unpack(creds)
        task = self.kernel.tasks.get(pid)
        if task is None:
            return ({"v": list(wire.PROTOCOL_VERSION), "ok": False, "reason": "refused",
                     "errno": errno.ESRCH, "detail": f"pid {pid} is not registered"}, [])
        return {"v": list(wire.PROTOCOL_VERSION), "ok": True, "fds": ["tlb"]}, \
            [mm.tlb_word(self.kernel, task)]

    def _register(self, sock: socket.socket, hello: dict[str, Any]) -> dict[str, Any]:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        pid, uid, gid = _UCRED.unpack(creds)
        self._reap_if_dead(pid)
        if hello.get("kind") != wire.EXEC and len(self.kernel.tasks) >= conns.max_processes():
            raise RegistrationRefused(conns.E_TOO_MANY, f"{len(self.kernel.tasks)} processes "
                                      "registered, a quarter of the daemon's RLIMIT_NOFILE")
        try:
            pidfd = os.pidfd_open(pid) if hello.get("kind") != wire.EXEC else -1
        except ProcessLookupError:
            raise RegistrationRefused(wire.E_UNKNOWN_PROCESS, f"pid {pid} is gone") from None
        try:
            task = register(self.kernel, pid, uid, gid, real_ppid(pid), hello)
        except BaseException:
            if pidfd >= 0:
                os.close(pidfd)
            raise
        if pidfd >= 0:
            task.pidfd = pidfd
            self.pidfds[pidfd] = pid
            self._watch(pidfd, lambda: self._died(pidfd))
        peer = self.peers[pid] = Peer(secrets.token_bytes(wire.SECRET_LEN))
        assert peer.secret is not None
        return {
            "v": list(wire.PROTOCOL_VERSION), "ok": True, "pid": pid, "secret": peer.secret,
            "daemon_pid": os.getpid(),
            "endpoint": self.endpoint,
            "pmem": {"name": self.kernel.pmem.name, "nblocks": self.config.nblocks,
                     "block_size": self.config.block_size},
            "config": {"policy": self.kernel.policy.name, "flavour": self.config.flavour,
                       "lease_break_time": self.config.lease_break_time},
            **describe(),
        }

    def _reap_if_dead(self, pid: int) -> None:
        """Finish the exit of a task whose PID a new process now registers with."""
        task = self.kernel.tasks.get(pid)
        if task is not None and task.pidfd >= 0:
            r, _, _ = select.select([task.pidfd], [], [], 0)
            if r:
                self._died(task.pidfd)

    def _died(self, pidfd: int) -> None:
        pid = self.pidfds.pop(pidfd, None)
        self._unwatch(pidfd)
        os.close(pidfd)
        task = self.kernel.tasks.get(pid) if pid is not None else None
        if task is not None:
            self.kernel.exit_task(task, "died")
        if pid is not None and pid not in self.kernel.tasks:
            self.peers.pop(pid, None)

    def watch_pid(self, pid: int, on_death: Callable[[], None]) -> bool:
        """KernelIO: call ``on_death`` when ``pid`` dies (used for unregistered children)."""
        try:
            pidfd = os.pidfd_open(pid)
        except (OSError, OverflowError, ValueError):
            return False

        def fire() -> None:
            self._unwatch(pidfd)
            os.close(pidfd)
            on_death()

        self._watch(pidfd, fire)
        return True

    # --- control messages -------------------------------------------------------------

    def _drain_router(self) -> bool:
        """Handle up to BATCH messages; True if more are waiting."""
        router = self.router
        for _ in range(BATCH):
            if not int(router.get(_EVENTS)) & _POLLIN:
                return False
            first = router.recv(_NOBLOCK, copy=False)
            frames = [first.bytes]
            while router.get(_RCVMORE):
                frames.append(router.recv(_NOBLOCK))
            self.stats["messages"] += 1
            if len(frames) != 2:
                self.stats["protocol_errors"] += 1
                continue  # not a DEALER single-frame message: dropped
            self._message(frames[0], frames[1], sender_pid(first))
        return bool(int(router.get(_EVENTS)) & _POLLIN)

    def _error(self, route: bytes, rid: Any, reason: str, detail: str,
               task: Task | None = None) -> None:
        self.stats["protocol_errors"] += 1
        self.evlog.emit("protocol-error", reason=reason, detail=detail,
                        pid=task.pid if task else None)
        body = {"v": list(wire.PROTOCOL_VERSION), "k": wire.REPLY, "pid": 0, "seq": 0,
                "id": rid if isinstance(rid, int) else None, "error": reason, "detail": detail}
        peer = self.peers.get(task.pid) if task is not None else None
        if task is not None and peer is not None and peer.secret is not None:
            self._send(task, body)
        else:
            self.router.send(route, _SNDMORE)
            self.router.send(wire.pack(body) + bytes(wire.MAC_LEN))

    def _message(self, route: bytes, frame: bytes, sender: int | None = None) -> None:
        try:
            self._message_checked(route, frame, sender)
        except Exception:  # a daemon bug: report it, keep serving
            detail = traceback.format_exc(limit=8)
            log.error("bug handling a message: %s", detail)
            self._error(route, None, "internal", detail)

    def _message_checked(self, route: bytes, frame: bytes, sender: int | None) -> None:
        """Open, authenticate and dispatch one control frame.

        A frame speaks for the process whose connection carries it, and only for it:
        ``sender`` is the PID the host kernel recorded for the connection
        (``SO_PEERCRED``, net/unix/af_unix.c ``init_peercred()``), which must be the
        ``pid`` the frame claims before its secret or sequence number is looked at, so
        a child made by a raw ``fork()`` that inherited its parent's secret, or a thief
        of it, is refused without touching the process it names.
        """
        try:
            body, payload, mac = wire.open_frame(frame)
        except ProtocolError as exc:
            # the refusal names the request it refuses (read without decoding the rest),
            # so its caller stops waiting: a frame too large, values nested too deep
            named = exc.reason == wire.E_TOO_LARGE or exc.detail.startswith(wire.TOO_DEEP)
            rid = wire.request_id(frame) if named else None
            self._error(route, rid, exc.reason, exc.detail)
            return
        rid = body.get("id")
        task = self.kernel.tasks.get(body["pid"])
        peer = self.peers.get(body["pid"]) if task is not None else None
        if task is None or peer is None or peer.secret is None:
            self._error(route, rid, wire.E_UNKNOWN_PROCESS, f"pid {body['pid']} not registered")
            return
        if sender != body["pid"]:
            self._error(route, rid, wire.E_AUTH,
                        f"a frame for pid {body['pid']} sent by pid {sender} (SO_PEERCRED)")
            return
        if not wire.verify(payload, mac, peer.secret):
            self._error(route, rid, wire.E_AUTH, "bad message authentication code")
            return
        if body["seq"] <= peer.last_seq:
            self._error(route, rid, wire.E_REPLAY, f"seq {body['seq']} <= {peer.last_seq}")
            return
        peer.last_seq = body["seq"]
        peer.route = route
        if body["k"] == wire.CALL:
            self._call(task, body)
        elif body["k"] == wire.NOTIFY:
            self._notify(task, body)
        else:
            self._error(route, rid, wire.E_MALFORMED, f"agents do not send {body['k']}", task)

    def _route(self, task: Task) -> bytes:
        peer = self.peers.get(task.pid)
        return peer.route or b"" if peer is not None else b""

    def _notify(self, task: Task, body: dict[str, Any]) -> None:
        what = body.get("what")
        handler = self.kernel.notify_handlers.get(what) if isinstance(what, str) else None
        if handler is None:
            if what != "hello":
                self._error(self._route(task), None, wire.E_MALFORMED, f"notify {what!r}", task)
            return
        handler(task, body)

    def _interrupt(self, task: Task, body: dict[str, Any]) -> None:
        """NOTIFY ``interrupt``: a signal with a handler reached the process while call
        ``id`` slept; it returns EINTR, as ``wait_event_interruptible`` does."""
        rid = body.get("id")
        rids = list(task.parked) if rid is None else [rid] if isinstance(rid, int) else []
        for r in rids:
            cancel = task.parked.pop(r, None)
            if cancel is None:
                continue  # it finished first
            cancel()
            self.evlog.emit("interrupted", pid=task.pid, id=r)
            self.reply(task, r, None, errno.EINTR)

    def _call(self, task: Task, body: dict[str, Any]) -> None:
        rid, name, args = body.get("id"), body.get("call"), body.get("args", [])
        if not isinstance(rid, int) or isinstance(rid, bool) or not isinstance(name, str):
            self._error(self._route(task), rid, wire.E_MALFORMED, "call needs int id and str call",
                        task)
            return
        if rid in task.parked:
            self._error(self._route(task), rid, wire.E_MALFORMED, f"request id {rid} in use", task)
            return
        spec = SYSCALLS.get(name)
        if spec is None:
            self.evlog.emit("call", pid=task.pid, id=rid, call=name, args=args)
            self.reply(task, rid, None, errno.ENOSYS)  # as for an unknown syscall number
            return
        try:
            spec.bind(args)
        except BadArguments as exc:
            self._error(self._route(task), rid, wire.E_BAD_ARGUMENTS, str(exc), task)
            return
        if self.evlog.enabled:
            self.evlog.emit("call", pid=task.pid, id=rid, call=name, args=args)
        start = functools.partial(spec.handler, self.kernel, task, *args)
        self._dispatch(task, rid, spec, start, start)
        peer = self.peers.get(task.pid)
        if peer is not None and peer.revoke:
            peer.revoke = False
            peer.secret = None

    def _dispatch(self, task: Task, rid: int, spec: Syscall, start: Callable[[], Any],
                  step: Callable[[], Any], slept: MustWait | None = None) -> None:
        """Run one step of a call (``start``, the handler from the beginning, or what it
        resumes with after a sleep) and answer it, or park it again if it sleeps.
        ``slept`` is the sleep this step ends: what it holds is undone if it fails."""
        k = self.kernel
        k.current = (task, rid, spec.name)
        try:
            result = step()
        except KernelError as exc:
            if slept is not None:
                slept.abort()
            self.reply(task, rid, None, exc.errno)
            return
        except MustWait as wait:
            if slept is not None:
                # the call sleeps again: it resumes where it did before, unless it now
                # says otherwise, and still holds what it held
                wait.resume = wait.resume or slept.resume
                for abort in slept.aborts:
                    wait.add_abort(abort)
            self._sleep(task, rid, spec, start, wait)
            return
        except Exception:  # a daemon bug: report it as one, keep serving
            detail = traceback.format_exc(limit=8)
            log.error("bug in %s: %s", spec.name, detail)
            self._error(self._route(task), rid, "internal", detail, task)
            return
        finally:
            k.current = None
        self.reply(task, rid, result)

    def _sleep(self, task: Task, rid: int, spec: Syscall, start: Callable[[], Any],
               wait: MustWait) -> None:
        """Park a call that sleeps; when woken it resumes (or runs again from the start)."""
        if len(task.parked) >= MAX_PARKED:
            wait.abort()
            self.reply(task, rid, None, errno.EAGAIN)
            return
        woken = False

        def wake() -> None:
            nonlocal woken
            if woken:
                return
            woken = True
            unregister()
            task.parked.pop(rid, None)
            self.restarts.append(lambda: self._restart(task, rid, spec, start, wait))

        unregister = wait.register(wake)

        def on_death_or_interrupt() -> None:
            nonlocal woken
            woken = True
            unregister()
            wait.abort()

        task.parked[rid] = on_death_or_interrupt
        self.evlog.emit("park", pid=task.pid, id=rid, call=spec.name)

    def _restart(self, task: Task, rid: int, spec: Syscall, start: Callable[[], Any],
                 wait: MustWait) -> None:
        if self.kernel.tasks.get(task.pid) is not task:
            wait.abort()
            return  # died meanwhile
        self.evlog.emit("restart", pid=task.pid, id=rid, call=spec.name)
        self._dispatch(task, rid, spec, start, wait.resume or start, wait)

    def _send(self, task: Task, body: dict[str, Any]) -> None:
        peer = self.peers.get(task.pid)
        if peer is None or peer.route is None or peer.secret is None:
            return
        peer.out_seq += 1
        body["seq"] = peer.out_seq
        self.router.send(peer.route, _SNDMORE)
        self.router.send(wire.seal(body, peer.secret))

    # --- KernelIO ---------------------------------------------------------------------

    def reply(self, task: Task, rid: int, value: Any = None, err: int | None = None) -> None:
        """Answer request ``rid`` of ``task`` (now, or later for a parked call)."""
        body: dict[str, Any] = {"v": list(wire.PROTOCOL_VERSION), "k": wire.REPLY,
                                "pid": task.pid, "id": rid}
        if err is None:
            body["ok"] = value
        else:
            body["errno"] = err
        # logged before it is sent: what the caller does next comes after it in time
        if self.evlog.enabled:
            if err is None:
                self.evlog.emit("ret", pid=task.pid, id=rid, result=value)
            else:
                self.evlog.emit("ret", pid=task.pid, id=rid, errno=linux.errno_name(err))
        self._send(task, body)

    def revoke_after_reply(self, task: Task) -> None:
        """KernelIO: after this call's reply, accept no frame from ``task`` until it
        registers again (exec)."""
        peer = self.peers.get(task.pid)
        if peer is not None:
            peer.revoke = True

    def event(self, task: Task, body: dict[str, Any]) -> None:
        """Push an event to ``task``'s agent."""
        msg = {"v": list(wire.PROTOCOL_VERSION), "k": wire.EVENT, "pid": task.pid}
        msg.update(body)
        self._send(task, msg)


def sender_pid(frame: zmq.Frame) -> int | None:
    """The PID of the process at the other end of the connection ``frame`` came on.

    libzmq reads ``SO_PEERCRED`` of every ``ipc://`` connection when it is set up and
    gives it as the message property ``Peer-Address`` (``host:uid:gid:pid``); the host
    kernel recorded it at ``connect()``, so nothing the sender writes can change it.
    None when there is none (a transport without credentials).
    """
    try:
        return int(str(frame.get("Peer-Address")).rsplit(":", 1)[1])
    except (zmq.ZMQError, ValueError, IndexError):
        return None


def _drain(sock: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError):
        while sock.recv(4096):
            pass


def monotonic() -> float:
    """The daemon's clock (exposed for tests)."""
    return time.monotonic()
