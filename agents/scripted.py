"""``python -m agents.scripted``: the generic scripted agent, one per scenario actor.

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
import collections
import os
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

import msgpack

from agents.api import EmuSystem, System, make_system
from agents.peer import EmuMailbox, HostMailbox, Mailbox
from agents.scenario.calls import CALLS, EMU_BACKGROUND
from agents.scenario.expr import ExprError, evaluate
from agents.scenario.link import Link, LinkClosed


@dataclass
class Background:
    """A call started with ``&``: a request id (emulator) or a thread (host)."""

    call: str
    args: list[Any]
    rid: int | None = None
    thread: threading.Thread | None = None
    result: dict[str, Any] = field(default_factory=dict)


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
        self.background: collections.deque[Background] = collections.deque()

    def _mailbox(self) -> Mailbox:
        if isinstance(self.system, EmuSystem):
            return EmuMailbox(self.run_dir, self.name, self.system)
        return HostMailbox(self.run_dir, self.name)

    # --- the loop ---------------------------------------------------------------------

    def serve(self) -> None:
        """Execute steps until the launcher says exit or goes away."""
        while True:
            try:
                step = self.link.recv()
            except LinkClosed:
                os._exit(0)
            _reap()
            op = step.get("op")
            if op == "exit":
                self.link.send({"ok": 0})
                os._exit(0)
            if op == "join":
                self.link.send(self.join())
                continue
            if op == "settings":
                self.step_timeout = float(step.get("step_timeout", self.step_timeout))
                self.link.send({"ok": 0})
                continue
            reply = self.execute(step)
            if reply is not None:
                self.link.send(reply)

    def evaluate_args(self, source: str, actors: list[str]) -> tuple[str, list[Any]]:
        """Evaluate the call's arguments in this actor's variables."""
        node = ast.parse(source, mode="eval").body
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        names = frozenset(actors)
        return node.func.id, [evaluate(a, self.vars, names) for a in node.args]

    def execute(self, step: dict[str, Any]) -> dict[str, Any] | None:
        """Run one call line; returns the reply (None in a fork child)."""
        try:
            name, args = self.evaluate_args(step["source"], step.get("actors", []))
        except (ExprError, KeyError, TypeError, IndexError) as exc:
            return {"error": f"cannot evaluate arguments: {exc}"}
        bind = step.get("bind")
        if name == "fork":
            return self.fork(step["child"] or f"{self.name}.child", bind)
        if name == "exec":
            self.exec(step.get("actors", []))
        if name == "exit":
            self.link.send({"ok": 0, "args": args})
            os._exit(int(args[0]) if args else 0)
        fn = CALLS.get(name)
        if fn is None:
            return {"error": f"unknown function {name}", "args": args}
        if step.get("background"):
            return self.start_background(name, args, bind)
        reply = _outcome(lambda: fn(self, *args))
        if bind and "ok" in reply:
            self.vars[bind] = reply["ok"]
        reply["args"] = args
        return reply

    # --- background calls -------------------------------------------------------------

    def start_background(self, name: str, args: list[Any], bind: str | None) -> dict[str, Any]:
        """Start a call and answer at once; :meth:`join` collects its result."""
        bg = Background(name, args)
        bg.result["bind"] = bind
        if isinstance(self.system, EmuSystem):
            if name not in EMU_BACKGROUND:
                return {"error": f"{name} cannot run in the background", "args": args}
            bg.rid = self.system.conn.submit(name, *_raw_args(name, args))
        else:
            fn = CALLS[name]

            def run() -> None:
                bg.result.update(_outcome(lambda: fn(self, *args)))

            bg.thread = threading.Thread(target=run, name=f"bg-{name}", daemon=True)
            bg.thread.start()
        self.background.append(bg)
        return {"started": True, "args": args}

    def join(self) -> dict[str, Any]:
        """Wait for the oldest background call and report its result."""
        if not self.background:
            return {"error": "join without a background call"}
        bg = self.background.popleft()
        if bg.rid is not None:
            assert isinstance(self.system, EmuSystem)
            convert = EMU_BACKGROUND[bg.call]
            rid = bg.rid
            outcome = _outcome(lambda: convert(self.system.conn.wait(rid)))
            bg.result.update(outcome)
        elif bg.thread is not None:
            bg.thread.join()
        bind = bg.result.pop("bind", None)
        if bind and "ok" in bg.result:
            self.vars[bind] = bg.result["ok"]
        return {**bg.result, "call": bg.call, "args": bg.args}

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
        self.name = child
        if bind:
            self.vars[bind] = 0
        self.background.clear()
        self.mailbox = self._mailbox()
        self.link = Link.connect(self.director)
        self.link.send({"hello": child, "pid": os.getpid(), "kind": "fork"})
        return None

    def exec(self, actors: list[str]) -> None:
        """execve(2) of a fresh scripted agent with this actor's variables."""
        argv = [sys.executable, "-m", "agents.scripted", "--name", self.name, "--run-dir",
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
        return {"errno": exc.errno}
    except Exception as exc:  # a scenario error or an agent bug: shown, never an errno
        return {"error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc(limit=4)}


def _reap() -> None:
    """Collect exited children (fork children whose actor ended)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m agents.scripted")
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
