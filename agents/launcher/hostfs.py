"""Where the host target's actors have their root: the ``host_fs`` run setting.

The host kernel is the oracle, but its answer can depend on the filesystem (reflink
is XFS's and btrfs's, tmpfs has no ``FICLONE``, ext4 none either).  ``set host_fs =``

* ``run`` (the default): ``<run folder>/root``, on whatever filesystem ``$KEMU_RUNS`` is;
* ``ext4``: a folder under ``/tmp``, which must be ext4;
* ``tmpfs``: a folder under ``/dev/shm``, which must be tmpfs;
* ``xfs``: a fresh XFS (``mkfs.xfs -m reflink=1``) on a loop device over a sparse
  image of :data:`XFS_IMAGE_MB` MiB in ``/tmp``, mounted for the run.

``<run folder>/root`` is then a symbolic link to it.  What a choice needs and does not
find here (the filesystem type, ``mkfs.xfs``, a free loop device, root) is said by
:func:`unavailable`, and the run is skipped with that message; after the run the
folder is removed, and for XFS the mount, the loop device and the image too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile

#: the choices of ``host_fs``
CHOICES = ("run", "ext4", "tmpfs", "xfs")
#: the size of the XFS image (sparse: it takes the disk space its files take); the
#: smallest XFS mkfs.xfs 6 makes is 300 MiB
XFS_IMAGE_MB = 320
#: where each choice's folder is made
_BASE = {"ext4": "/tmp", "tmpfs": "/dev/shm", "xfs": "/tmp"}


def fs_type(path: str) -> str:
    """The type of the filesystem ``path`` is on (``/proc/self/mounts``, the longest
    mount point that contains it)."""
    real = os.path.realpath(path)
    best, kind = "", "?"
    with open("/proc/self/mounts") as fh:
        for line in fh:
            words = line.split()
            if len(words) < 3:
                continue
            point = words[1].replace("\\040", " ")
            inside = real == point or real.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, words[2]
    return kind


def unavailable(choice: str) -> str | None:
    """Why ``host_fs = choice`` cannot be had on this machine, or None."""
    if choice == "run":
        return None
    if choice not in CHOICES:
        return f"host_fs {choice!r}: not one of {', '.join(CHOICES)}"
    if choice in ("ext4", "tmpfs"):
        found = fs_type(_BASE[choice])
        if found != choice:
            return f"host_fs {choice}: {_BASE[choice]} is {found} here, not {choice}"
        return None
    if os.geteuid() != 0:
        return "host_fs xfs: needs root (losetup, mount)"
    for tool in ("mkfs.xfs", "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"host_fs xfs: {tool} not found (mkfs.xfs is in Debian's xfsprogs)"
    if not os.path.exists("/dev/loop-control"):
        return "host_fs xfs: no loop devices (/dev/loop-control)"
    return None


class HostRoot:
    """The root of one host run's actors, made by :meth:`make`, removed by
    :meth:`remove`."""

    def __init__(self, choice: str, run_dir: str) -> None:
        self.choice = choice
        self.link = os.path.join(run_dir, "root")
        #: the folder made for the run (None: the run folder's own root)
        self.folder: str | None = None
        self.image: str | None = None
        self.loop: str | None = None
        self.mountpoint: str | None = None

    def make(self) -> str:
        """Make the root (mode 0755) and return its path; RuntimeError saying what
        failed (the run cannot start)."""
        if self.choice == "run":
            os.makedirs(self.link, exist_ok=True)
            os.chmod(self.link, 0o755)
            return self.link
        why = unavailable(self.choice)
        if why:
            raise RuntimeError(why)
        if self.choice == "xfs":
            self._make_xfs()
            assert self.mountpoint is not None
            root = os.path.join(self.mountpoint, "root")
            os.mkdir(root)
        else:
            root = tempfile.mkdtemp(prefix="kemu-root-", dir=_BASE[self.choice])
        self.folder = root
        os.chmod(root, 0o755)
        os.symlink(root, self.link)
        return root

    def _make_xfs(self) -> None:
        fd, self.image = tempfile.mkstemp(prefix="kemu-xfs-", suffix=".img", dir="/tmp")
        os.ftruncate(fd, XFS_IMAGE_MB << 20)
        os.close(fd)
        self.loop = _run(["losetup", "--find", "--show", self.image]).strip()
        _run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", self.loop])
        self.mountpoint = tempfile.mkdtemp(prefix="kemu-xfs-", dir="/tmp")
        os.chmod(self.mountpoint, 0o755)
        _run(["mount", "-t", "xfs", self.loop, self.mountpoint])

    def remove(self) -> None:
        """Remove what :meth:`make` made (never raises: the run's outcome matters more;
        what could not be removed is left and said on stderr by the tools)."""
        if self.folder is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.link)
            if self.mountpoint is None:
                shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        if self.mountpoint is not None:
            with contextlib.suppress(subprocess.CalledProcessError, OSError):
                _run(["umount", self.mountpoint])
                os.rmdir(self.mountpoint)
            self.mountpoint = None
        if self.loop is not None:
            with contextlib.suppress(subprocess.CalledProcessError, OSError):
                _run(["losetup", "--detach", self.loop])
            self.loop = None
        if self.image is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.image)
            self.image = None


def _run(argv: list[str]) -> str:
    """Run a tool (bounded: 60 s); its output, CalledProcessError with its words."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, argv, done.stdout, done.stderr)
    return done.stdout
