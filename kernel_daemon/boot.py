"""The composition root: build a kernel from its configuration.

:func:`boot` makes the kernel's state (:class:`~kernel_daemon.kernel.Kernel`), loads
the design (:func:`load_policy`: a built-in name, or a ``Policy`` subclass in a user's
file), and registers every system-call family's lifecycle hooks in one place (as
gVisor's loader registers the syscall table with its kernel).  Nothing else in
``kernel_daemon`` but this module and the daemon imports the families or the designs.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import traceback
from types import ModuleType
from typing import Any

from kemu.kernel_daemon import locks, mm, qp, signals
from kemu.kernel_daemon.designs import BUILTIN
from kemu.kernel_daemon.errors import KernelError, MustWait
from kemu.kernel_daemon.eventlog import EventLog
from kemu.kernel_daemon.kernel import Config, Kernel, KernelIO
from kemu.kernel_daemon.policy import HOOKS, Policy
from kemu.kernel_daemon.syscalls import ipc, proc
from kemu.kernel_daemon.syscalls import pipe as pipe_calls
from kemu.kernel_daemon.syscalls import rdma as rdma_calls
from kemu.kernel_daemon.task import Task
from kemu.protocol import linux
from kemu.protocol.config import FLAVOURS


class PolicyLoadError(Exception):
    """A design could not be loaded; the message names the file and line."""


def promises_of(cls: type[Policy]) -> list[str]:
    """What a design promises, by the names of :class:`~kemu.policy.Promise`."""
    return sorted(p.name for p in cls.promises)


def describe() -> dict[str, object]:
    """What this daemon can run: its designs, what each promises, and its flavours (the
    welcome advertises it)."""
    return {"policies": list(BUILTIN), "flavours": list(FLAVOURS),
            "promises": {name: promises_of(cls) for name, cls in BUILTIN.items()}}


def _load_file(path: str) -> ModuleType:
    """Import a design file by path, turning every failure into a PolicyLoadError."""
    if not os.path.isfile(path):
        raise PolicyLoadError(f"{path}: no such design file")
    name = "kemu_design_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PolicyLoadError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise PolicyLoadError(f"{exc.filename or path}:{exc.lineno}: {exc.msg}") from None
    except BaseException as exc:
        del sys.modules[name]
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if os.path.abspath(f.filename) == os.path.abspath(path)]
        line = frames[-1].lineno if frames else 1
        raise PolicyLoadError(f"{path}:{line}: {type(exc).__name__}: {exc}") from None
    return module


def load_policy(spec: str) -> type[Policy]:
    """The design named by ``spec``: a built-in name, or ``path/to/design.py`` with an
    optional ``:ClassName`` (needed when the file defines several Policy subclasses)."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    path, _, cls_name = spec.partition(":") if not os.path.isfile(spec) else (spec, "", "")
    if not path.endswith(".py") and not os.path.isfile(path):
        raise PolicyLoadError(f"unknown policy {spec!r}; known: {', '.join(BUILTIN)} "
                              f"(or PATH.py[:Class] of a Policy subclass)")
    module = _load_file(path)
    found = [obj for _, obj in inspect.getmembers(module, inspect.isclass)
             if issubclass(obj, Policy) and obj is not Policy and obj.__module__ == module.__name__]
    if cls_name:
        chosen = next((c for c in found if c.__name__ == cls_name), None)
        if chosen is None:
            raise PolicyLoadError(f"{path}:1: no Policy subclass named {cls_name!r} "
                                  f"(found: {', '.join(c.__name__ for c in found) or 'none'})")
        return chosen
    if not found:
        # the interface imported under another name (a checkout's top-level
        # kernel_daemon): the same class in a second copy of the module, never ours
        stray = [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                 if obj.__module__ == module.__name__ and any(
                     b.__name__ == "Policy" and b is not Policy
                     and b.__module__.endswith("kernel_daemon.policy") for b in obj.__mro__)]
        if stray:
            base = next(b for b in stray[0].__mro__ if b.__name__ == "Policy")
            raise PolicyLoadError(
                f"{path}:1: {stray[0].__name__} derives from {base.__module__}.Policy, "
                f"not kemu.policy.Policy: write 'from kemu.policy import Policy'")
        raise PolicyLoadError(f"{path}:1: defines no subclass of kemu.policy.Policy")
    if len(found) > 1:
        # a file may build on its own base class: take the classes nobody derives from
        leaves = [c for c in found if not any(o is not c and issubclass(o, c) for o in found)]
        if len(leaves) != 1:
            raise PolicyLoadError(f"{path}:1: several Policy subclasses "
                                  f"({', '.join(c.__name__ for c in found)}); name one "
                                  f"with {path}:ClassName")
        found = leaves
    chosen = found[0]
    if not isinstance(chosen.name, str) or not chosen.name or chosen.name == "base":
        raise PolicyLoadError(f"{path}:{inspect.getsourcelines(chosen)[1]}: "
                              f"{chosen.__name__} needs a name (class attribute 'name')")
    return chosen


def trace_policy(policy: Policy, log: EventLog) -> None:
    """Record in the event log every time the design decides something: a hook that
    refuses (raises an errno), sleeps, or answers True (handles a lease flag, keeps a
    block busy).  ``explore`` names the rule that made two designs part with it."""
    for hook in HOOKS:
        method = getattr(policy, hook)
        if getattr(type(policy), hook) is getattr(Policy, hook):
            continue  # Linux's default decides nothing

        def traced(*args: object, _hook: str = hook, _method: Any = method) -> Any:
            task = next((a for a in args if isinstance(a, Task)), None)
            pid = task.pid if task is not None else None
            try:
                result = _method(*args)
            except KernelError as exc:
                log.emit("design", hook=_hook, pid=pid, result=linux.errno_name(exc.errno))
                raise
            except MustWait:
                log.emit("design", hook=_hook, pid=pid, result="sleeps")
                raise
            if result is True:
                log.emit("design", hook=_hook, pid=pid, result="handled")
            return result

        setattr(policy, hook, traced)


def boot(config: Config, io: KernelIO, log: EventLog | None = None) -> Kernel:
    """A kernel running ``config.policy``, with every family's lifecycle hooks."""
    policy = load_policy(config.policy)()
    k = Kernel(config, io, policy, log)
    if k.log.enabled:
        trace_policy(policy, k.log)
    # files: leases and uverbs contexts go with a description's last reference
    k.file_release_hooks.append(lambda f: locks.remove_file_leases(k, f))
    k.file_release_hooks.append(lambda f: rdma_calls.release_file(k, f))
    k.file_release_hooks.append(lambda f: pipe_calls.release_file(k, f))
    # exit: sockets, mappings (and their shoot-downs), queue pairs
    k.exit_hooks.append(lambda task: ipc.release_task_mailboxes(k, task))
    k.exit_hooks.append(lambda task: mm.drop_all(k, task, "exit"))
    k.exit_hooks.append(lambda task: qp.release_task(k, task))
    k.exit_hooks.append(lambda task: proc.release_exe(k, task))
    # exec: the design first, then signal handlers reset, mappings and queue pairs go
    k.exec_hooks.append(lambda task: k.policy.exec(k, task))
    k.exec_hooks.append(signals.on_exec)
    k.exec_hooks.append(lambda task: mm.drop_all(k, task, "exec"))
    k.exec_hooks.append(lambda task: qp.release_task(k, task))
    # fork: the address space as it was at fork_prepare, dispositions inherited
    k.fork_prepare_hooks.append(
        lambda parent, pending: setattr(pending, "mm", mm.snapshot_mappings(k, parent)))
    k.fork_drop_hooks.append(lambda pending: mm.drop_snapshot(k, pending.mm))
    k.fork_hooks.append(lambda parent, child, pending: signals.on_fork(parent, child))
    k.fork_hooks.append(lambda parent, child, pending: mm.copy_snapshot(k, child, pending.mm))
    k.block_alloc_hooks.append(lambda owner: mm.unmap_zero_page(k, owner))
    k.shutdown_hooks.append(lambda: qp.release_all(k))
    k.notify_handlers["tlb-ack"] = lambda task, body: mm.shootdown_ack(k, task, body)
    return k
