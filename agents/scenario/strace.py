"""strace-like rendering of calls and results for transcripts.

``open("/f", O_RDWR|O_CREAT, 0644) = 3``, ``read(3, 5) = "hello"``,
``unlink("/nope") = -1 ENOENT (No such file or directory)``: flag words, commands and
modes are shown by name, as strace decodes them.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable
from typing import Any

from kemu.protocol import linux

_OPEN_FLAGS = [
    ("O_CREAT", linux.O_CREAT), ("O_EXCL", linux.O_EXCL), ("O_NOCTTY", linux.O_NOCTTY),
    ("O_TRUNC", linux.O_TRUNC), ("O_APPEND", linux.O_APPEND), ("O_NONBLOCK", linux.O_NONBLOCK),
    ("O_DSYNC", linux.O_DSYNC), ("O_ASYNC", linux.O_ASYNC), ("O_DIRECT", linux.O_DIRECT),
    ("O_LARGEFILE", linux.O_LARGEFILE), ("O_DIRECTORY", linux.O_DIRECTORY),
    ("O_NOFOLLOW", linux.O_NOFOLLOW), ("O_NOATIME", linux.O_NOATIME),
    ("O_CLOEXEC", linux.O_CLOEXEC), ("O_PATH", linux.O_PATH),
]
_ACC = {linux.O_RDONLY: "O_RDONLY", linux.O_WRONLY: "O_WRONLY", linux.O_RDWR: "O_RDWR",
        linux.O_ACCMODE: "O_ACCMODE"}
_FCNTL = {v: k for k, v in linux.CONSTANTS.items()
          if k.startswith("F_") and k not in ("F_RDLCK", "F_WRLCK", "F_UNLCK", "F_LAYOUT",
                                              "F_EXCLUSIVE", "F_OWNER_TID", "F_OWNER_PID",
                                              "F_OWNER_PGRP", "F_LINUX_SPECIFIC_BASE", "F_SETLK",
                                              "F_GETLK", "F_SETLKW")}
_FCNTL.update({linux.F_GETLK: "F_GETLK", linux.F_SETLK: "F_SETLK", linux.F_SETLKW: "F_SETLKW"})
_LEASE = {linux.F_RDLCK: "F_RDLCK", linux.F_WRLCK: "F_WRLCK", linux.F_UNLCK: "F_UNLCK"}
_WHENCE = {linux.SEEK_SET: "SEEK_SET", linux.SEEK_CUR: "SEEK_CUR", linux.SEEK_END: "SEEK_END",
           linux.SEEK_DATA: "SEEK_DATA", linux.SEEK_HOLE: "SEEK_HOLE"}
_SIGNALS = {v: k for k, v in vars(linux).items()
            if k.startswith("SIG") and not k.startswith("SIGRT") and k not in ("SIGPOLL",)
            and isinstance(v, int)}


def open_flags(flags: int) -> str:
    """``O_RDWR|O_CREAT`` for an open(2) flag word."""
    words = [_ACC[flags & linux.O_ACCMODE]]
    rest = flags & ~linux.O_ACCMODE
    for name, bit in _OPEN_FLAGS:
        if rest & bit == bit and bit:
            words.append(name)
            rest &= ~bit
    if rest:
        words.append(hex(rest))
    return "|".join(words)


def prot_flags(prot: int) -> str:
    """``PROT_READ|PROT_WRITE``."""
    names = [n for n, b in (("PROT_READ", linux.PROT_READ), ("PROT_WRITE", linux.PROT_WRITE),
                            ("PROT_EXEC", linux.PROT_EXEC)) if prot & b]
    return "|".join(names) or "PROT_NONE"


_MAP_TYPES = {linux.MAP_SHARED: "MAP_SHARED", linux.MAP_PRIVATE: "MAP_PRIVATE",
              linux.MAP_SHARED_VALIDATE: "MAP_SHARED_VALIDATE"}
_MAP_FLAGS = [(name, getattr(linux, name)) for name in
              ("MAP_FIXED", "MAP_ANONYMOUS", "MAP_POPULATE", "MAP_SYNC", "MAP_DIRECT")]


def map_flags(flags: int) -> str:
    """``MAP_SHARED_VALIDATE|MAP_SYNC``."""
    kind = flags & linux.MAP_TYPE
    words = [_MAP_TYPES.get(kind, hex(kind))]
    rest = flags & ~linux.MAP_TYPE
    for name, bit in _MAP_FLAGS:
        if flags & bit:
            words.append(name)
            rest &= ~bit
    if rest:
        words.append(hex(rest))
    return "|".join(words)


def signal_name(sig: int) -> str:
    """``SIGIO``, ``SIGRTMIN+1`` (kernel numbering), or the number."""
    if sig in _SIGNALS:
        return _SIGNALS[sig]
    if linux.SIGRTMIN <= sig <= linux.SIGRTMAX:
        return f"SIGRTMIN+{sig - linux.SIGRTMIN}" if sig > linux.SIGRTMIN else "SIGRTMIN"
    return str(sig)


def lease_type(arg: int) -> str:
    """``F_WRLCK``, ``F_LAYOUT|F_EXCLUSIVE``."""
    words = []
    base = arg & ~(linux.F_LAYOUT | linux.F_EXCLUSIVE)
    if arg & linux.F_LAYOUT:
        words.append("F_LAYOUT")
    if arg & linux.F_EXCLUSIVE:
        words.append("F_EXCLUSIVE")
    if base or not words:
        words.insert(0, _LEASE.get(base, str(base)))
    return "|".join(words)


class Bare(str):
    """Text shown as it is, unquoted (an actor name standing for a PID)."""


def _names(*names: str) -> dict[int, str]:
    return {getattr(linux, n): n for n in names}


_SI_CODES = _names("SI_USER", "SI_KERNEL", "SI_QUEUE", "SI_SIGIO", "SI_TKILL", "POLL_IN",
                   "POLL_OUT", "POLL_MSG", "POLL_ERR", "POLL_PRI", "POLL_HUP")


_FAULT_CODES = {linux.SIGBUS: _names("BUS_ADRALN", "BUS_ADRERR", "BUS_OBJERR"),
                linux.SIGSEGV: _names("SEGV_MAPERR", "SEGV_ACCERR")}


def value(v: Any) -> str:
    """A value as strace would print it: strings quoted, bytes as a C string."""
    if isinstance(v, Bare):
        return str(v)
    if isinstance(v, dict) and v.get("si_signo") in _FAULT_CODES:
        codes = _FAULT_CODES[v["si_signo"]]
        fields = [f"si_signo={signal_name(v['si_signo'])}",
                  f"si_code={codes.get(v.get('si_code', 0), v.get('si_code'))}"]
        if "si_addr" in v:
            fields.append(f"si_addr={v['si_addr']:#x}")
        return "{" + ", ".join(fields) + "}"
    if isinstance(v, bytes | bytearray):
        return '"' + "".join(_cchar(b) for b in bytes(v)[:32]) + ('"...' if len(v) > 32 else '"')
    if isinstance(v, str):
        shown = v if len(v) <= 32 else v[:32]
        text = '"' + shown.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return text + ("..." if len(v) > 32 else "")
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}={_field(k, x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    return str(v)


def si_code_name(code: int) -> str:
    """``POLL_MSG``, ``SI_KERNEL``: a SIGIO-style ``si_code`` by name (else the number)."""
    return _SI_CODES.get(code, str(code))


def _field(key: str, v: Any) -> str:
    if key == "si_signo" and isinstance(v, int):
        return signal_name(v)
    if key == "si_code" and isinstance(v, int):
        return _SI_CODES.get(v, str(v))
    if key == "si_band" and isinstance(v, int):
        return str(v)  # strace prints the band in decimal
    if key == "st_mode" and isinstance(v, int):
        kind = {linux.S_IFREG: "S_IFREG", linux.S_IFDIR: "S_IFDIR", linux.S_IFCHR: "S_IFCHR",
                linux.S_IFIFO: "S_IFIFO", linux.S_IFSOCK: "S_IFSOCK", linux.S_IFLNK: "S_IFLNK"}
        return f"{kind.get(v & linux.S_IFMT, oct(v & linux.S_IFMT))}|{v & 0o7777:04o}"
    if key == "flags" and isinstance(v, int):
        return open_flags(v)
    return value(v)


def _cchar(b: int) -> str:
    table = {0: "\\0", 9: "\\t", 10: "\\n", 13: "\\r", 34: '\\"', 92: "\\\\"}
    if b in table:
        return table[b]
    return chr(b) if 32 <= b < 127 else f"\\{b:o}"


def _octal(v: Any) -> str:
    return f"0{v:o}" if isinstance(v, int) else value(v)


def _fcntl_args(args: list[Any]) -> list[str]:
    out = [value(args[0]) if args else "?"]
    if len(args) > 1:
        cmd = args[1]
        out.append(_FCNTL.get(cmd, str(cmd)))
        if len(args) > 2:
            arg = args[2]
            if cmd == linux.F_SETFL:
                out.append(open_flags(arg))
            elif cmd == linux.F_SETFD:
                out.append("FD_CLOEXEC" if arg == linux.FD_CLOEXEC else str(arg))
            elif cmd == linux.F_SETLEASE:
                out.append(lease_type(arg))
            elif cmd == linux.F_SETSIG:
                out.append(signal_name(arg) if arg else "0")
            elif cmd in (linux.F_GETFD, linux.F_GETFL, linux.F_GETLEASE, linux.F_GETOWN,
                         linux.F_GETSIG) and not arg:
                pass
            else:
                out.append(value(arg))
    return out


def access_mode(mode: int) -> str:
    """An access(2) mode as strace shows it: ``F_OK`` or ``R_OK|W_OK|X_OK``."""
    if not isinstance(mode, int) or mode & ~0o7:
        return value(mode)
    names = [n for n, bit in (("R_OK", linux.R_OK), ("W_OK", linux.W_OK),
                              ("X_OK", linux.X_OK)) if mode & bit]
    return "|".join(names) or "F_OK"


_DIRFD = {linux.AT_FDCWD: "AT_FDCWD"}
_RLIMITS = {linux.RLIMIT_NOFILE: "RLIMIT_NOFILE", linux.RLIMIT_SIGPENDING: "RLIMIT_SIGPENDING"}


def _rlim(v: Any) -> str:
    """A limit as strace shows it (RLIM64_INFINITY by name)."""
    return "RLIM64_INFINITY" if v in (-1, linux.RLIM_INFINITY) else value(v)
_AT_FLAGS = {0: "0", linux.AT_EACCESS: "AT_EACCESS",
             linux.AT_SYMLINK_NOFOLLOW: "AT_SYMLINK_NOFOLLOW"}


_ARGS: dict[str, Callable[[list[Any]], list[str]]] = {
    "open": lambda a: [value(a[0]), open_flags(a[1])] + ([_octal(a[2])] if len(a) > 2 else []),
    "mkdir": lambda a: [value(a[0])] + ([_octal(a[1])] if len(a) > 1 else []),
    "umask": lambda a: [_octal(a[0])],
    "chmod": lambda a: [value(a[0]), _octal(a[1])],
    "mkfifo": lambda a: [value(a[0])] + ([_octal(a[1])] if len(a) > 1 else []),
    "fchmod": lambda a: [value(a[0]), _octal(a[1])],
    "access": lambda a: [value(a[0]), access_mode(a[1])],
    "faccessat": lambda a: [_DIRFD.get(a[0], value(a[0])), value(a[1]), access_mode(a[2])]
    + ([_AT_FLAGS.get(a[3], value(a[3]))] if len(a) > 3 else []),
    "getrlimit": lambda a: [_RLIMITS.get(a[0], value(a[0]))],
    "setrlimit": lambda a: [_RLIMITS.get(a[0], value(a[0])),
                            f"{{rlim_cur={_rlim(a[1])}, rlim_max={_rlim(a[2])}}}"],
    "lseek": lambda a: [value(a[0]), value(a[1]), _WHENCE.get(a[2], str(a[2]))],
    "dup3": lambda a: [value(a[0]), value(a[1]), open_flags(a[2]) if a[2] else "0"],
    "fcntl": _fcntl_args,
    "signal": lambda a: [signal_name(a[0])] + [value(x) for x in a[1:]],
    "sigwait": lambda a: [signal_name(a[0])] + [value(x) for x in a[1:]],
    "sigtimedwait": lambda a: [signal_name(a[0])] + [value(x) for x in a[1:]],
    "sigblock": lambda a: [signal_name(x) for x in a],
    "sigunblock": lambda a: [signal_name(x) for x in a],
    "kill": lambda a: [value(a[0]), signal_name(a[1])],
    "mmap": lambda a: [value(a[0]), prot_flags(a[1]), map_flags(a[2])] + [value(x) for x in a[3:]],
    "munmap": lambda a: [hex(a[0]), value(a[1])],
    "store": lambda a: [hex(a[0]), value(a[1])],
    "load": lambda a: [hex(a[0]), value(a[1])],
}


#: calls strace knows by another name: the scenario's ``exit`` is the C library's
#: ``exit``, which ends in ``exit_group(2)``
_STRACE_NAMES = {"exit": "exit_group"}


def call(name: str, args: list[Any]) -> str:
    """``name(arg, ...)`` decoded strace-style."""
    if name == "exit":
        return f"exit_group({value(args[0]) if args else 0})"
    try:
        shown = _ARGS[name](args) if name in _ARGS else [value(a) for a in args]
    except (IndexError, KeyError, TypeError):
        shown = [value(a) for a in args]
    return f"{name}({', '.join(shown)})"


def result(name: str, args: list[Any], reply: dict[str, Any]) -> str:
    """`` = 3``, `` = -1 ENOENT (No such file or directory)``, `` = O_RDWR|O_LARGEFILE``."""
    if "errno" in reply:
        code = reply["errno"]
        return f"-1 {linux.errno_name(code)} ({os.strerror(code)})"
    if "error" in reply:
        return f"? <scenario error: {reply['error']}>"
    if name in _STRACE_NAMES:
        return "?"  # exit_group(2) does not return
    v = reply.get("ok")
    if name == "waitpid" and isinstance(v, dict) and "status" in v:
        return f"{value(v.get('pid'))} [{{{v['status']}}}]"  # wait4's status, decoded
    if name == "mmap" and isinstance(v, int):
        return hex(v)
    if name == "fcntl" and len(args) > 1 and isinstance(v, int):
        cmd = args[1]
        if cmd == linux.F_GETFL:
            return f"{v:#x} ({open_flags(v)})"
        if cmd == linux.F_GETFD:
            return f"{v:#x} (FD_CLOEXEC)" if v == linux.FD_CLOEXEC else str(v)
        if cmd == linux.F_GETLEASE:
            return lease_type(v)
        if cmd == linux.F_GETSIG:
            return signal_name(v) if v else "0"
    return value(v)


#: the argument that is a mode, by call
_MODE_ARG = {"open": 2, "mkdir": 1, "umask": 0, "chmod": 1, "fchmod": 1, "mkfifo": 1}


def octal_modes(source: str) -> str:
    """A scenario line's source with its mode argument in octal, as it was written
    (``open('/f', O_RDWR | O_CREAT, 0o644)``, not ``420``); other text unchanged."""
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        return source
    node = tree.body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return source
    i = _MODE_ARG.get(node.func.id)
    if i is None or len(node.args) <= i:
        return source
    arg = node.args[i]
    if not isinstance(arg, ast.Constant) or type(arg.value) is not int:
        return source
    node.args[i] = ast.Name(id=f"0o{arg.value:o}")
    return ast.unparse(tree)
