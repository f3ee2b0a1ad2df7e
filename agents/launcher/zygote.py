"""Actors and kernel daemons forked from a pre-imported process (a zygote).

Every actor and every daemon of a run used to be a fresh interpreter: tens of
milliseconds idle, seconds under load, most of it importing (and, with
``PYTHONDONTWRITEBYTECODE``, compiling) the agent or daemon stack.  A *zygote* does that
once: a process started with ``python -m kemu.agents.launcher.zygote`` imports both stacks,
freezes its heap (``gc.freeze``, so children do not copy it by touching reference
counts) and then forks a process per request, as ``multiprocessing``'s forkserver and
Android's zygote do.  Each child is a real process with its own PID that runs the
module's ``main(argv)``.

What a child inherits from the zygote is made exactly what a fresh ``Popen`` of
``python -m MODULE ARGV`` with ``close_fds=True`` gives:

* descriptors: 0, 1 and 2 from the caller (passed with ``SCM_RIGHTS``), plus the
  caller's ``pass_fds`` under the same numbers; every other descriptor is closed;
* signals: what ``execve`` keeps, the caller's signal mask and ignored signals (plus
  SIGPIPE and SIGXFSZ, which Python ignores at startup), every other disposition the
  default (SIGINT Python's handler), nothing pending;
* process group, session and credentials: the launcher's, as the zygote is its child;
* environment: the caller's (``os.environ`` is replaced); the variables a Python
  interpreter reads at startup (``PYTHON*``) must be the zygote's, so one zygote is
  kept per set of them;
* rlimits: the zygote's (the launcher's), with ``RLIMIT_NOFILE`` set as asked;
* working directory: the caller's; ``sys.argv`` as ``python -m MODULE`` sets it.

The zygote is the child's parent: it reaps it and keeps its wait status until the
launcher asks (``Child.wait``, once the child's pidfd says it has ended), so the
launcher sees the ``returncode`` a ``Popen`` would give.  The launcher makes itself a
child subreaper before it starts a zygote: orphans of its actors come to it, and so do
the zygote's children should the zygote die.

The zygote ends with its launcher: when its socket reaches end of file (the launcher
closed it, exited, or was killed by anything, SIGKILL included) it SIGKILLs every child
still running, reaps them, removes the shared-memory segments they left
(``/dev/shm/kemu-<pid>-*``, the names daemons give theirs) and exits.  So a test run
that dies or times out leaves no daemon, actor or segment behind.  (Not
``PR_SET_PDEATHSIG``: that follows the parent *thread*, and a launcher starts its zygote
from whichever thread spawns first, a matrix's worker thread for one.)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from typing import Any, NoReturn, Protocol

import msgpack

from kemu.protocol import shm
from kemu.protocol.linux import PR_SET_CHILD_SUBREAPER

#: what a zygote imports before it serves: the actor and the daemon stacks
PRELOAD = ("kemu.agents.scenario.scripted", "kemu.kernel_daemon.__main__", "kemu.kernel_daemon.daemon",
           "kemu.kernel_daemon.boot", "kemu.kernel_daemon.designs")
MAX_FDS = 16
#: ``spawn("path:FILE", argv)`` runs a script, as ``python FILE argv`` would
PATH_PREFIX = "path:"
#: set to a directory: every child leaves its cProfile statistics MODULE-PID.prof there
PROFILE_ENV = "KEMU_ZYGOTE_PROFILE"
#: one request (argv and environment): far more than any actor needs
MAX_REQUEST = 1 << 20


class ZygoteError(RuntimeError):
    """The zygote could not start a process."""


# --- the launcher's side -----------------------------------------------------------------


class Child:
    """A process forked by the zygote: the part of ``subprocess.Popen`` the launcher uses.

    Its parent is the zygote, which reaps it and keeps its wait status until asked; a
    pidfd taken at once tells when it has ended and makes signals safe from PID reuse.
    ``returncode`` follows ``Popen``: the exit status, or minus the signal that killed it.
    """

    def __init__(self, pid: int, zygote: Zygote) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.args: list[str] = []
        self._zygote = zygote
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:  # pragma: no cover - a zombie until the zygote is asked
            self._pidfd = -1
        _tracked.add(pid)

    def poll(self) -> int | None:
        """The return code if the process has ended, else None."""
        if self.returncode is None and (self._pidfd < 0 or select.select(
                [self._pidfd], [], [], 0)[0]):
            self._collect()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to end; ``subprocess.TimeoutExpired`` after ``timeout``."""
        if self.returncode is None and self._pidfd >= 0 and not select.select(
                [self._pidfd], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        if self.returncode is None:
            self._collect()
        assert self.returncode is not None
        return self.returncode

    def _collect(self) -> None:
        """The process has ended: its status from the zygote that reaped it (or, if that
        zygote is gone and the process was re-parented to this subreaper, from here)."""
        try:
            status = self._zygote.status(self.pid)
        except ZygoteError:
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:  # nobody can tell any more: as Popen, say 0
                status = 0
        self.returncode = os.waitstatus_to_exitcode(status)
        _tracked.discard(self.pid)
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def send_signal(self, sig: int) -> None:
        """Signal the process unless it has been reaped (its PID may be another's)."""
        if self.returncode is None:
            if self._pidfd >= 0:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._pidfd, sig)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)

    def terminate(self) -> None:
        """SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def __del__(self) -> None:
        if getattr(self, "_pidfd", -1) >= 0:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)


def _signal_state() -> dict[str, list[int]]:
    """The calling thread's signal mask and this process's ignored signals: what a
    child started with ``fork`` + ``execve`` from here would inherit."""
    mask = sorted(int(sig) for sig in signal.pthread_sigmask(signal.SIG_BLOCK, []))
    ignored: list[int] = []
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("SigIgn:"):
                bits = int(line.split()[1], 16)
                ignored = [sig for sig in range(1, 65) if bits >> (sig - 1) & 1]
    return {"mask": mask, "ignored": ignored}


#: PIDs of zygote children not reaped yet (the launcher's reaper of orphans skips them)
_tracked: set[int] = set()


def tracked() -> frozenset[int]:
    """PIDs forked by a zygote of this process and not reaped yet."""
    return frozenset(_tracked)


class Zygote:
    """A running zygote and the launcher's end of its socket (one request at a time)."""

    def __init__(self, env: dict[str, str]) -> None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.lock = threading.Lock()
        self.owner = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kemu.agents.launcher.zygote", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL)
        theirs.close()

    def spawn(self, module: str, argv: list[str], *, env: dict[str, str],
              stdio: tuple[int, int, int], pass_fds: tuple[int, ...] = (),
              cwd: str | None = None, nofile: int | None = None) -> Child:
        """Fork ``python -m module argv`` with these descriptors; see the module docstring."""
        request = msgpack.packb({"op": "spawn", "module": module, "argv": argv, "env": env,
                                 "cwd": cwd or os.getcwd(), "fds": list(pass_fds),
                                 "nofile": nofile, **_signal_state()})
        answer = self._ask(request, [*stdio, *pass_fds])
        child = Child(int(answer["pid"]), self)
        child.args = [sys.executable, "-m", module, *argv]
        return child

    def status(self, pid: int) -> int:
        """The wait status of child ``pid``, which has ended (the zygote reaps it)."""
        return int(self._ask(msgpack.packb({"op": "status", "pid": pid}), [])["status"])

    def _ask(self, request: bytes, fds: list[int]) -> dict[str, Any]:
        with self.lock:
            if not self.alive():
                raise ZygoteError("the zygote is gone")
            try:
                socket.send_fds(self.sock, [request], fds)
                reply = self.sock.recv(4096)
            except OSError as exc:
                raise ZygoteError(f"the zygote is gone: {exc}") from None
        if not reply:
            raise ZygoteError(f"the zygote is gone (status {self.proc.poll()})")
        answer: dict[str, Any] = msgpack.unpackb(reply)
        if "error" in answer:
            raise ZygoteError(str(answer["error"]))
        return answer

    def alive(self) -> bool:
        """Is this zygote running and this process's own (not inherited through fork)?"""
        return self.owner == os.getpid() and self.proc.poll() is None

    def close(self) -> None:
        """End the zygote: it exits when its socket closes."""
        self.sock.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_zygotes: dict[tuple[tuple[str, str], ...], Zygote] = {}
_zygotes_lock = threading.Lock()


def _key(env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """What an interpreter takes from its environment at startup: a zygote per value."""
    return tuple(sorted((k, v) for k, v in env.items() if k.startswith("PYTHON")))


def zygote(env: dict[str, str]) -> Zygote:
    """This process's zygote for ``env`` (started on first use)."""
    key = _key(env)
    with _zygotes_lock:
        z = _zygotes.get(key)
        if z is None or not z.alive():
            z = _zygotes[key] = Zygote(env)
        return z


class Process(Protocol):
    """What the launcher needs of a child process: a zygote :class:`Child` or, with
    ``KEMU_NO_ZYGOTE=1``, a ``subprocess.Popen``."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


#: set to 1: every child is a fresh ``python -m`` (``subprocess.Popen``), as before the
#: zygote: for a benchmark's baseline, or to rule the zygote out when debugging
NO_ZYGOTE_ENV = "KEMU_NO_ZYGOTE"


def spawn(module: str, argv: list[str], *, env: dict[str, str], stdio: tuple[int, int, int],
          pass_fds: tuple[int, ...] = (), cwd: str | None = None,
          nofile: int | None = None) -> Process:
    """Start ``python -m module argv`` as a child of this process, forked from a zygote
    (retried once on a fresh zygote if the one it had is gone)."""
    if os.environ.get(NO_ZYGOTE_ENV) == "1":
        def limits() -> None:
            if nofile is not None:
                import resource

                _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))

        program = ([module.removeprefix(PATH_PREFIX)] if module.startswith(PATH_PREFIX)
                   else ["-m", module])
        return subprocess.Popen([sys.executable, *program, *argv], env=env,
                                stdin=stdio[0], stdout=stdio[1], stderr=stdio[2],
                                pass_fds=pass_fds, cwd=cwd, close_fds=True,
                                preexec_fn=limits)
    try:
        return zygote(env).spawn(module, argv, env=env, stdio=stdio, pass_fds=pass_fds,
                                 cwd=cwd, nofile=nofile)
    except ZygoteError:
        with _zygotes_lock:
            _zygotes.pop(_key(env), None)
        return zygote(env).spawn(module, argv, env=env, stdio=stdio, pass_fds=pass_fds,
                                 cwd=cwd, nofile=nofile)


def run(module: str, argv: list[str], *, env: dict[str, str],
        timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``subprocess.run([python, -m, module, *argv], capture_output=True, text=True)``,
    forked from a zygote: the exit status, standard output and error."""
    null = os.open(os.devnull, os.O_RDONLY)
    out, err = os.memfd_create("stdout"), os.memfd_create("stderr")
    try:
        child = spawn(module, argv, env=env, stdio=(null, out, err))
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise
        texts = []
        for fd in (out, err):
            os.lseek(fd, 0, os.SEEK_SET)
            with os.fdopen(os.dup(fd), "rb") as fh:
                texts.append(fh.read().decode(errors="replace"))
    finally:
        for fd in (null, out, err):
            os.close(fd)
    return subprocess.CompletedProcess([sys.executable, "-m", module, *argv], code, texts[0],
                                       texts[1])


def shutdown() -> None:
    """End every zygote of this process."""
    with _zygotes_lock:
        for z in _zygotes.values():
            if z.owner == os.getpid():
                z.close()
        _zygotes.clear()


# --- the zygote's side ---------------------------------------------------------------------


def _child(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become ``python -m module argv`` and never return."""
    code = 1
    try:
        _become(request, fds)
        code = _run(request)
    except BaseException:  # as the interpreter: the traceback on stderr, status 1
        import traceback

        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        os._exit(code)


def _become(request: dict[str, Any], fds: list[int]) -> None:
    """Descriptors, signal mask, limits, directory and environment of a fresh process."""
    targets = [0, 1, 2, *(int(fd) for fd in request["fds"])]
    # move what was received out of the way, then onto the numbers asked for
    high = [fcntl_dupfd(fd, 256) for fd in fds]
    for src, dst in zip(high, targets, strict=True):
        os.dup2(src, dst, inheritable=True)
    keep = set(targets)
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            with contextlib.suppress(OSError):
                os.close(int(name))
    # what execve keeps: the caller's signal mask and ignored signals (Python itself
    # ignores SIGPIPE and SIGXFSZ at startup); every other disposition the default
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            if sig in request["ignored"] or sig in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(sig, signal.SIG_IGN)
            elif sig == signal.SIGINT:
                signal.signal(sig, signal.default_int_handler)
            elif signal.getsignal(sig) != signal.SIG_DFL:
                signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, request["mask"])
    if request["nofile"] is not None:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(int(request["nofile"]), hard), hard))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])


def _entry(request: dict[str, Any]) -> Any:
    """What the child runs: the module's ``main(argv)`` as ``python -m`` would, or a
    script (``path:FILE``) as ``python FILE`` would, with ``sys.argv`` and
    ``sys.path[0]`` set as the interpreter sets them."""
    spec = str(request["module"])
    if spec.startswith(PATH_PREFIX):
        path = os.path.abspath(spec.removeprefix(PATH_PREFIX))
        sys.argv = [path, *request["argv"]]
        sys.path[0:1] = [os.path.dirname(path)]
        import runpy

        return lambda argv: runpy.run_path(path, run_name="__main__") and None
    module = importlib.import_module(spec)
    sys.argv = [str(getattr(module, "__file__", spec)), *request["argv"]]
    if "" in sys.path[:1]:
        sys.path[0] = os.getcwd()
    return module.main


def _run(request: dict[str, Any]) -> int:
    """Run the child's program (:func:`_entry`); its exit status."""
    main = _entry(request)
    try:
        profile_dir = os.environ.get(PROFILE_ENV)
        if profile_dir:  # a developer's view of where a child's time goes
            import cProfile

            prof = cProfile.Profile()
            label = str(request['module']).replace('/', '_').replace(':', '_')
            where = os.path.join(profile_dir, f"{label}-{os.getpid()}.prof")
            real_exit = os._exit

            def _exit(status: int) -> NoReturn:  # an actor ends with os._exit
                prof.disable()
                prof.dump_stats(where)
                real_exit(status)

            os._exit = _exit
            try:
                result = prof.runcall(main, list(request["argv"]))
            finally:
                prof.dump_stats(where)
        else:
            result = main(list(request["argv"]))
        code = 0 if result is None else int(result)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # as the interpreter: the traceback on stderr, status 1
        import traceback

        traceback.print_exc()
        code = 1
    _shutdown = getattr(threading, "_shutdown", None)
    if _shutdown is not None:
        _shutdown()  # join non-daemon threads, as interpreter exit does
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


def fcntl_dupfd(fd: int, lowest: int) -> int:
    """``fcntl(fd, F_DUPFD_CLOEXEC, lowest)`` (the copy is not inherited by an exec)."""
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)


#: wait statuses of children that ended, until the launcher asks (bounded: a launcher
#: that never asks loses the oldest)
_statuses: dict[int, int] = {}
MAX_STATUSES = 65536


def _reap() -> None:
    """Reap every child that has ended and keep its status."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _reaped(pid)
        if len(_statuses) >= MAX_STATUSES:
            _statuses.pop(next(iter(_statuses)))
        _statuses[pid] = status


def _serve_one(sock: socket.socket) -> bool:
    """Answer one request; False once the launcher has closed its end."""
    try:
        data, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, MAX_FDS)
    except InterruptedError:
        return True
    if not data:
        for fd in fds:
            os.close(fd)
        return False
    try:
        request = msgpack.unpackb(data)
        if request.get("op") == "status":
            pid = int(request["pid"])
            _reap()
            if pid not in _statuses:  # it has ended (its pidfd said so): reap it now
                _, _statuses[pid] = os.waitpid(pid, 0)
                _reaped(pid)
            answer: dict[str, Any] = {"status": _statuses.pop(pid)}
        else:
            answer = _spawn(request, fds)
    except (ValueError, KeyError, TypeError, OSError, msgpack.UnpackException) as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        for fd in fds:
            os.close(fd)
    with contextlib.suppress(OSError):
        sock.send(msgpack.packb(answer))
    return True


def _spawn(request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
    """Fork a child for ``request``; its PID."""
    if len(fds) != 3 + len(request["fds"]):
        raise ValueError("descriptor count does not match the request")
    # imported here, once, so the next child of the same module starts imported (an
    # import error is the child's: it shows on its stderr, as with python -m)
    if not str(request["module"]).startswith(PATH_PREFIX):
        with contextlib.suppress(Exception):
            importlib.import_module(str(request["module"]))
    _reap()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        _child(request, fds)
    _spawned.add(pid)
    return {"pid": pid}


#: every child forked and not yet reaped, for the sweep at the end: only these PIDs are
#: ours to kill (an unreaped child, running or a zombie, keeps its PID; a reaped one's
#: PID may already name another process of the machine)
_spawned: set[int] = set()
#: children reaped whose shared-memory segments may be left (a daemon killed by SIGKILL)
_gone: set[int] = set()
#: at most this many of them are remembered (the launcher removes a run's segments)
MAX_GONE = 65536


def _reaped(pid: int) -> None:
    """``pid`` was reaped: it is no longer ours to signal."""
    _spawned.discard(pid)
    if len(_gone) >= MAX_GONE:
        _gone.pop()
    _gone.add(pid)


def _sweep() -> None:
    """The launcher is gone: kill what still runs, reap it, remove what it left.

    Only children not reaped yet are signalled: their PIDs are still theirs.  (The
    sweep used to SIGKILL every PID the zygote had ever forked, and a long campaign's
    reaped PIDs, reused by then, named other processes of the machine: the next
    ``kemu find`` a script started was killed as its predecessor's zygote ended.)  The
    segments go first: whoever watches a child's pidfd sees it end before it is
    reaped, and must find its segments gone by then.  A segment made between the
    removal and the kill goes in the second pass.  Those of a child reaped earlier are
    removed only while no process has its PID (a reused PID's segments are not ours)."""
    for pid in _spawned:
        shm.remove(f"{shm.PREFIX}{pid}-")
    for pid in sorted(_spawned):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # our own unreaped child: its PID is not reused
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    for pid in _spawned:
        shm.remove(f"{shm.PREFIX}{pid}-")
    for pid in _gone:
        if not os.path.exists(f"/proc/{pid}"):
            shm.remove(f"{shm.PREFIX}{pid}-")


#: run once in the zygote, output discarded, so that what every child would build
#: anew (argparse's parsers and the regular expressions they compile, in ``re``'s
#: cache) is built once and inherited
WARM_UP = (("kemu.agents.scenario.scripted", ["--help"]), ("kemu.kernel_daemon.__main__", ["--help"]))


def _warm_up() -> None:
    import io

    for module, argv in WARM_UP:
        with contextlib.suppress(BaseException), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            importlib.import_module(module).main(argv)


def serve(fd: int) -> int:
    """The zygote's loop: preload, then fork a process per request until EOF; then
    sweep (see the module docstring)."""
    sock = socket.socket(fileno=fd)
    try:
        return _serve(sock)
    finally:
        _sweep()


def _serve(sock: socket.socket) -> int:
    for name in PRELOAD:
        importlib.import_module(name)
    _warm_up()
    import gc

    gc.collect()
    gc.freeze()
    while True:
        try:
            if not _serve_one(sock):
                return 0
        except KeyboardInterrupt:  # ^C reached the launcher's whole group
            return 130
        except OSError as exc:
            if exc.errno in (errno.EBADF, errno.ENOTCONN, errno.ECONNRESET):
                return 0
            raise


def main(argv: list[str] | None = None) -> int:
    """``python -m kemu.agents.launcher.zygote FD`` (its end of the launcher's socket)."""
    args = sys.argv[1:] if argv is None else argv
    return serve(int(args[0]))


if __name__ == "__main__":
    sys.exit(main())
