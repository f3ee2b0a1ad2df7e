"""POSIX shared-memory segments without ``multiprocessing``'s resource tracker.

``multiprocessing.shared_memory.SharedMemory`` (Python 3.11) registers every segment it
creates *or attaches to* with a resource tracker, and the first registration of a
process starts the tracker: a fresh interpreter, about 80 ms of CPU, once per daemon
and once per agent that maps the device.  The daemon owns its segments' lifetime, and
the launcher removes what a killed daemon leaves (``DaemonProcess``), so the tracker
buys nothing here.

On Linux ``shm_open(3)`` is ``open(2)`` of a file in ``/dev/shm`` (glibc's
``__shm_get_name``), so that is what this does: ``O_CREAT | O_EXCL`` with mode 0600
to create, ``O_RDWR`` to attach, then ``mmap`` of the whole object.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import secrets

SHM_DIR = "/dev/shm"
#: what every generated name starts with, followed by the creating process's PID and a
#: dash: whoever outlives a killed creator removes ``PREFIX<pid>-*``
PREFIX = "kemu-"


class Segment:
    """A shared-memory object mapped whole: ``name``, ``size``, ``buf``."""

    #: the object's name in /dev/shm ("" for one passed by descriptor)
    name: str
    size: int
    buf: memoryview
    _mmap: mmap.mmap | None

    def __init__(self, name: str | None = None, *, create: bool = False, size: int = 0,
                 prefix: str | None = None, fd: int | None = None) -> None:
        if fd is not None:  # an object passed by descriptor: no name to reach it by
            self.name = ""
            try:
                self.size = os.fstat(fd).st_size
                self._mmap = mmap.mmap(fd, self.size)
            finally:
                os.close(fd)
            self.buf = memoryview(self._mmap)
            return
        if create and size <= 0:
            raise ValueError("a new segment needs a positive size")
        if name is not None and ("/" in name or name in ("", ".", "..")):
            raise ValueError(f"bad shared-memory name {name!r}")
        while True:
            self.name = name if name is not None else (
                (prefix if prefix is not None else f"{PREFIX}{os.getpid()}-")
                + secrets.token_hex(4))
            path = os.path.join(SHM_DIR, self.name)
            flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
            try:
                fd = os.open(path, flags, 0o600)
            except FileExistsError:
                if name is not None:
                    raise
                continue  # a generated name that is taken: draw another
            break
        try:
            if create:
                os.ftruncate(fd, size)
            self.size = size if create else os.fstat(fd).st_size
            self._mmap = mmap.mmap(fd, self.size)
        except BaseException:
            if create:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        finally:
            os.close(fd)
        self.buf = memoryview(self._mmap)

    def dontfork(self) -> None:
        """``madvise(MADV_DONTFORK)``: a child made by ``fork()`` does not inherit the
        mapping (mm/madvise.c; what ``VM_DONTCOPY`` gives a driver's mapping)."""
        if self._mmap is not None:
            self._mmap.madvise(mmap.MADV_DONTFORK)

    def address(self) -> int:
        """Where the object is mapped in this process."""
        assert self._mmap is not None
        cbuf = ctypes.c_char.from_buffer(self._mmap)
        try:
            return ctypes.addressof(cbuf)
        finally:
            del cbuf

    def close(self) -> None:
        """Unmap (the object stays until :meth:`unlink`)."""
        if self._mmap is not None:
            self.buf.release()
            self._mmap.close()
            self._mmap = None

    def unlink(self) -> None:
        """Remove the object's name (``shm_unlink(3)``); nothing for a nameless one."""
        if self.name:
            os.unlink(os.path.join(SHM_DIR, self.name))


def placeholder(address: int, size: int) -> None:
    """Map an inaccessible anonymous placeholder at ``address`` where nothing is mapped
    (a ``MADV_DONTFORK`` mapping in a fork child), so that unmapping that object later
    cannot unmap memory that came to live there (``MAP_FIXED_NOREPLACE``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    map_fixed_noreplace = 0x100000
    libc.mmap(address, size, 0,  # PROT_NONE
              mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | map_fixed_noreplace, -1, 0)


def anonymous(label: str, size: int) -> tuple[Segment, int]:
    """A shared-memory object without a name (``memfd_create(2)``), mapped whole, and
    a descriptor of it to pass (``SCM_RIGHTS``): only a holder of a descriptor can
    reach it, and it goes when the last descriptor and mapping go."""
    fd = os.memfd_create(label, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        seg = Segment(fd=os.dup(fd))
    except BaseException:
        os.close(fd)
        raise
    return seg, fd


def remove(prefix: str) -> list[str]:
    """Remove every segment whose name starts with ``prefix`` (what a killed daemon
    left); the names removed."""
    gone: list[str] = []
    if not prefix or "/" in prefix:
        return gone
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(SHM_DIR):
            if entry.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(SHM_DIR, entry))
                    gone.append(entry)
    return gone
