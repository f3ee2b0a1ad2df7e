"""``python -m kemu.agents.scenario.scripted``: the generic scripted agent, one per scenario actor.

It registers with the kernel daemon (emulator target) or uses the host kernel (host
target), connects to the launcher, and executes the scenario lines the launcher sends
it, one at a time, reporting each result (value or errno) with the evaluated arguments
for the transcript.  ``fork`` and ``exec`` are real: a fork child becomes a new actor
with a copy of the parent's variables; an exec'd image is a fresh interpreter that
gets the variables on its command line, as a real program gets descriptor numbers in
argv.
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import fcntl
import os
import select
import sys
import threading
import time
import traceback
from typing import Any

import msgpack
import zmq

from kemu.agents.lib.api import INFRA_FD_BASE, EmuSystem, System, make_system
from kemu.agents.lib.peer import EmuMailbox, HostMailbox, Mailbox
from kemu.agents.scenario.calls import CALLS, EMU_BACKGROUND, SLEEPS_IN
from kemu.agents.scenario.expr import UNSET, ExprError, Unset, evaluate, is_unset
from kemu.agents.scenario.link import LINK_LIMIT, Link, LinkClosed, echoed
from kemu.protocol import wire
from kemu.protocol.linux import PR_GET_DUMPABLE, PR_SET_DUMPABLE, errno_name


class Actor:
    """One scenario actor: a real process executing lines sent by the launcher."""

    def __init__(self, name: str, run_dir: str, target: str, director: str,
                 variables: dict[str, Any], kind: str) -> None:
        self.name = name
        self.run_dir = run_dir
        self.target = target
        self.director = director
        self.vars = variables
        self.step_timeout = 30.0
        self.system: System = make_system(target, run_dir, name)
        self.mailbox: Mailbox = self._mailbox()
        self.link = Link.connect(director)
        self.link.send({"hello": name, "pid": os.getpid(), "kind": kind})
        #: the result of the last background call, until joined
        self.done: dict[str, Any] | None = None
        #: actor name -> PID, as the launcher last told
        self.pids: dict[str, int] = {}
        #: ``on SIGNAME:`` handlers: signal -> (the line that installed it, its calls)
        self.handlers: dict[int, tuple[int, list[dict[str, Any]]]] = {}
        #: handlers that ran since the last answer: the signal and each call's outcome
        self.handled: list[dict[str, Any]] = []
        #: a handler is running: a signal taken meanwhile waits for it to end
        self.in_handler = False
        self.deferred: list[dict[str, Any]] = []
        self.system.reaction = self.react

    def _mailbox(self) -> Mailbox:
        if isinstance(self.system, EmuSystem):
            return EmuMailbox(self.run_dir, self.name, self.system)
        return HostMailbox(self.run_dir, self.name)

    # --- the loop ---------------------------------------------------------------------

    def _next_step(self) -> dict[str, Any]:
        """Wait for the launcher's next step, taking signals and the kernel's events
        (TLB shoot-downs) as they arrive meanwhile."""
        while True:
            if self.link.reader.buf:
                return self.link.recv()
            waits: list[int] = [self.link.sock.fileno()]
            rec = getattr(self.system, "_recorder", None)
            if rec is not None:
                waits.append(rec.fileno())
            conn = self.system.conn if isinstance(self.system, EmuSystem) else None
            if conn is not None:
                conn.pump(0)  # the socket's descriptor only tells of new arrivals
                waits.append(int(conn.sock.get(zmq.FD)))
            ready, _, _ = select.select(waits, [], [])
            if rec is not None and rec.fileno() in ready:
                self.system.process_signals()
            if self.link.sock.fileno() in ready:
                return self.link.recv()

    def serve(self) -> None:
        """Execute steps until the launcher says exit or goes away."""
        while True:
            try:
                step = self._next_step()
            except LinkClosed:
                os._exit(0)
            op = step.get("op")
            if op == "exit":
                self.answer({"ok": 0})
                os._exit(0)
            if op == "join":
                self.answer(self.join())
                continue
            if op == "sync":
                # the launcher asks, after another actor's line, what handlers ran: a
                # signal sent during that line is delivered before this is read
                self.answer({"ok": 0})
                continue
            reply = self.execute(step)
            if reply is not None:
                self.answer(reply)

    def answer(self, reply: dict[str, Any]) -> None:
        """Send the launcher ``reply`` with the signals delivered since the last answer
        (``delivered``: their siginfo, for the transcript's ``--- SIGIO {...} ---``)."""
        delivered = self.system.take_delivered()
        if delivered:
            reply = {**reply, "delivered": delivered}
        if self.handled:
            reply = {**reply, "handled": [
                {**h, "calls": [{**c, "args": echoed(c.get("args", []))} for c in h["calls"]]}
                for h in self.handled]}
            self.handled = []
        if "args" in reply:
            reply = {**reply, "args": echoed(reply["args"])}
        if len(wire.encode_record(reply)) > LINK_LIMIT:
            reply = {k: v for k, v in reply.items() if k not in ("ok", "args", "handled")}
            reply["error"] = f"the call's result is larger than the launcher link's {LINK_LIMIT} bytes"
        self.link.send(reply)

    def evaluate_args(self, source: str, actors: list[str]) -> tuple[str, list[Any]]:
        """Evaluate the call's arguments in this actor's variables."""
        node = ast.parse(source, mode="eval").body
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        return node.func.id, [evaluate(a, self.vars, self.pids) for a in node.args]

    def execute(self, step: dict[str, Any]) -> dict[str, Any] | None:
        """Run one call line; returns the reply (None in a fork child)."""
        self.pids = dict(step.get("pids", {}))
        if "step_timeout" in step:
            self.step_timeout = float(step["step_timeout"])
        if "handler" in step:
            return self.install_handler(int(step["signal"]), int(step["line"]),
                                        list(step["handler"]))
        bind = step.get("bind")
        try:
            name, args = self.evaluate_args(step["source"], list(self.pids))
        except Unset as exc:
            return self.skip(bind, str(exc), [])
        except (ExprError, KeyError, TypeError, IndexError) as exc:
            return {"error": f"cannot evaluate arguments: {exc}"}
        if name not in ("send", "signals", "fds") and any(is_unset(a) for a in args):
            reason = next(a[UNSET] for a in args if is_unset(a))
            return self.skip(bind, str(reason), args)
        if name == "fork":
            return self.fork(step["child"] or f"{self.name}.child", bind)
        if name == "exec" and args:
            # a program file: on success the process runs it and never answers (its
            # launcher link closes at exec); an error is the line's errno
            reply = _outcome(lambda: self.system.exec_program(
                str(args[0]), [str(a) for a in args]))
            return {**reply, "args": args}
        if name == "exec":
            self.exec()
        if name == "exit":
            self.answer({"ok": 0, "args": args})
            os._exit(int(args[0]) if args else 0)
        if step.get("background") and name in CALLS:
            self.background(name, args, bind)
            return None
        return self.call(name, args, bind)

    def skip(self, bind: str | None, reason: str, args: list[Any]) -> dict[str, Any]:
        """A line skipped for an unset input: its own variable is unset in turn, with the
        same reason, so that the lines that use it are skipped too (not scenario errors
        over an unknown name)."""
        if bind:
            self.vars[bind] = {UNSET: reason}
        return {"skipped": reason, "args": args}

    def call(self, name: str, args: list[Any], bind: str | None) -> dict[str, Any]:
        """Make one call (a line's or a handler's), timed for the time expectations
        (``after 1s``); its result is bound to ``bind``, or a failure is (the lines that
        use it are then skipped)."""
        fn = CALLS.get(name)
        if fn is None:
            return {"error": f"unknown function {name}", "args": args}
        began = time.monotonic()
        reply = _outcome(lambda: fn(self, *args))
        reply["elapsed"] = time.monotonic() - began
        if bind and "ok" in reply:
            self.vars[bind] = reply["ok"]
        elif bind and "errno" in reply:
            self.vars[bind] = {UNSET: f"{name} failed with {errno_name(reply['errno'])}"}
        reply["args"] = args
        return reply

    # --- signal handlers --------------------------------------------------------------

    def install_handler(self, signo: int, line: int,
                        calls: list[dict[str, Any]]) -> dict[str, Any]:
        """``on SIGNAME: call; ...``: sigaction(2) with a real SA_SIGINFO handler (no
        SA_RESTART: a call it interrupts returns EINTR), whose calls run when the
        signal is taken, as a program's handler would make them."""
        reply = _outcome(lambda: self.system.signal(signo, "record"))
        if "ok" in reply:
            self.handlers[signo] = (line, calls)
            reply["ok"] = 0
        reply["args"] = [signo]
        return reply

    def react(self, si: dict[str, Any]) -> bool:
        """A signal was delivered: run its ``on`` handler's calls (True), or leave it to
        ``signals()``/``sigwait()`` (False: no handler of the scenario's)."""
        entry = self.handlers.get(int(si.get("si_signo", 0)))
        if entry is None:
            return False
        if self.in_handler:  # Linux would run it when the handler returns
            self.deferred.append(si)
            return True
        self.in_handler = True
        try:
            todo = [si]
            while todo:
                info = todo.pop(0)
                line, calls = self.handlers.get(int(info["si_signo"]), entry)
                self.handled.append({"line": line, "si": info,
                                     "calls": [self._handler_call(c) for c in calls]})
                todo.extend(self.deferred)
                self.deferred = []
        finally:
            self.in_handler = False
        return True

    def _handler_call(self, call: dict[str, Any]) -> dict[str, Any]:
        """One call of a handler, with its outcome (as a line's reply)."""
        try:
            name, args = self.evaluate_args(str(call["source"]), list(self.pids))
        except Unset as exc:
            return {"skipped": str(exc), "args": []}
        except (ExprError, KeyError, TypeError, IndexError) as exc:
            return {"error": f"cannot evaluate arguments: {exc}", "args": []}
        return self.call(name, args, call.get("bind"))

    # --- background calls -------------------------------------------------------------

    def background(self, name: str, args: list[Any], bind: str | None) -> None:
        """Run a call that may sleep in the kernel, as a single-threaded program would.

        The launcher is told "started" once the call sleeps in the kernel (or is done),
        so the next line of the scenario runs while it sleeps; the result is kept for
        the ``join`` that must follow.  The call runs in this (the main) thread, so a
        signal interrupts it as it would interrupt the program.
        """
        announced = threading.Event()
        lock = threading.Lock()
        began = time.monotonic()

        def announce() -> None:
            with lock:
                if not announced.is_set():
                    announced.set()
                    self.link.send({"started": True, "args": echoed(args)})

        if isinstance(self.system, EmuSystem):
            if name not in EMU_BACKGROUND:
                self.done = {"error": f"{name} cannot run in the background", "args": args}
                announce()
                return
            conn = self.system.conn
            rid = conn.submit(name, *_raw_args(name, args))
            conn.call("getpid")  # answered only after the daemon parked or ran the call
            announce()
            convert = EMU_BACKGROUND[name]
            result = _outcome(lambda: convert(conn.wait(rid)))
        else:
            fn = CALLS[name]
            # opened now, at a high number, so the watcher never takes a descriptor
            # number the call itself is about to get
            raw = _open_task_syscall(threading.get_native_id())
            proc_fd = fcntl.fcntl(raw, fcntl.F_DUPFD_CLOEXEC, INFRA_FD_BASE)
            os.close(raw)
            watcher = threading.Thread(target=_announce_when_asleep,
                                       args=(proc_fd, SLEEPS_IN.get(name), announced, announce),
                                       daemon=True)
            watcher.start()
            result = _outcome(lambda: fn(self, *args))
            announce()
            watcher.join()
            os.close(proc_fd)
        if bind and "ok" in result:
            self.vars[bind] = result["ok"]
        self.done = {**result, "call": name, "args": args, "elapsed": time.monotonic() - began}

    def join(self) -> dict[str, Any]:
        """The result of the background call that ran last."""
        done, self.done = self.done, None
        if done is None:
            return {"error": "join without a background call"}
        return done

    # --- process calls ----------------------------------------------------------------

    def fork(self, child: str, bind: str | None) -> dict[str, Any] | None:
        """fork(2) for real; the child becomes actor ``child`` with a copy of the variables."""
        try:
            pid = self.system.fork(child)
        except OSError as exc:
            return {"errno": exc.errno, "args": []}
        if pid:
            if bind:
                self.vars[bind] = pid
            return {"ok": pid, "args": [], "child": child}
        # the child: the parent's launcher link and mailbox are not ours
        self.mailbox.close()
        self.link.close()
        self.system.delivered = []  # the parent's deliveries are the parent's to report
        self.handled, self.deferred = [], []
        self.name = child
        if bind:
            self.vars[bind] = 0
        self.done = None
        self.mailbox = self._mailbox()
        self.link = Link.connect(self.director)
        self.link.send({"hello": child, "pid": os.getpid(), "kind": "fork"})
        return None

    def exec(self) -> None:
        """execve(2) of a fresh scripted agent with this actor's variables."""
        argv = [sys.executable, "-m", "kemu.agents.scenario.scripted", "--name", self.name, "--run-dir",
                self.run_dir, "--target", self.target, "--director", self.director,
                "--vars", msgpack.packb(self.vars, use_bin_type=True).hex(), "--exec"]
        self.system.execv(argv)


def _raw_args(name: str, args: list[Any]) -> list[Any]:
    if name in ("write", "pwrite") and args and isinstance(args[1], str):
        return [args[0], args[1].encode(), *args[2:]]
    return args


def _outcome(fn: Any) -> dict[str, Any]:
    try:
        return {"ok": fn()}
    except OSError as exc:
        if exc.errno is None:  # TimeoutError and the like: not a system call's errno
            return {"error": f"{type(exc).__name__}: {exc}"}
        return {"errno": exc.errno}
    except Exception as exc:  # a scenario error or an agent bug: shown, never an errno
        return {"error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc(limit=4)}


def _open_task_syscall(tid: int) -> int:
    """Open this thread's ``/proc/self/task/<tid>/syscall`` (what the watcher reads).

    After ``setuid`` the process is not dumpable (``commit_creds()`` sets
    ``suid_dumpable``, 0), so its /proc files belong to root with their own modes
    (``task_dump_owner()``: ``syscall`` is root's 0400) and the open is EACCES.  The
    process is then made dumpable for the open only (``prctl(PR_SET_DUMPABLE)``) and
    set back at once; the reads that follow need only ``ptrace_may_access()``, which a
    thread of the same process always has.
    """
    path = f"/proc/self/task/{tid}/syscall"
    try:
        return os.open(path, os.O_RDONLY)
    except PermissionError:
        libc = ctypes.CDLL(None, use_errno=True)
        was = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
        if was < 0 or libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0:
            raise
        try:
            return os.open(path, os.O_RDONLY)
        finally:
            libc.prctl(PR_SET_DUMPABLE, was, 0, 0, 0)


def _announce_when_asleep(proc_fd: int, nr: int | None, done: threading.Event,
                          announce: Any) -> None:
    """Announce once the thread whose /proc/.../syscall is ``proc_fd`` sleeps in system
    call ``nr``."""
    while not done.is_set():
        try:
            words = os.pread(proc_fd, 256, 0).decode().split()
        except OSError:
            break
        if words and words[0] != "running" and (nr is None or words[0] == str(nr)):
            announce()
            return
        done.wait(0.0005)  # watching a state change of the kernel, not ordering processes


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m kemu.agents.scenario.scripted")
    p.add_argument("--name", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--target", choices=("emulator", "host"), required=True)
    p.add_argument("--director", required=True)
    p.add_argument("--vars", default="")
    p.add_argument("--exec", action="store_true", help="this image was exec'd by an actor")
    args = p.parse_args(argv)
    variables = msgpack.unpackb(bytes.fromhex(args.vars), raw=False) if args.vars else {}
    actor = Actor(args.name, args.run_dir, args.target, args.director, variables,
                  "exec" if args.exec else "start")
    actor.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
