"""The wire protocol between the kernel daemon and its agents.

Two channels:

* **registration**: an ``AF_UNIX`` stream socket.  The agent sends a *hello* stating
  the protocol version and how it came to be (spawned, forked with a token, exec'd with a
  token); the daemon reads the caller's PID from ``SO_PEERCRED`` (the host kernel vouches
  for it) and answers a *welcome* carrying a fresh per-process secret and the control
  endpoint, or a refusal with a machine-readable reason.  Records are a 4-byte
  big-endian length and a msgpack map.

* **control**: ZeroMQ, agent DEALER to daemon ROUTER.  Every message is one frame: a
  msgpack map followed by its 32-byte keyed-BLAKE2b MAC under the process's secret.  The map's
  header fields are ``v`` (protocol version), ``k`` (kind), ``pid`` and ``seq`` (strictly
  increasing per sender, so a replayed frame is refused).  One frame per message keeps a
  send atomic even when a signal handler in the agent sends in the middle of another call.

The protocol version is separate from the package version and is written down in
``docs/protocol.md``; a test keeps the two equal.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any, Final

import msgpack

from kemu.protocol.errors import ProtocolError, VersionMismatch

PROTOCOL_VERSION: Final[tuple[int, int]] = (2, 0)
#: Largest control frame either side accepts, in bytes.
MAX_FRAME: Final[int] = 4 * 1024 * 1024
#: Largest transfer one read or write call moves, in bytes: a longer one is a short
#: write (or read) at once, as Linux returns short at MAX_RW_COUNT; it keeps every such
#: call's frame well under MAX_FRAME.
MAX_IO: Final[int] = 1 << 20
#: Largest registration record, in bytes.
MAX_RECORD: Final[int] = 64 * 1024
MAC_LEN: Final[int] = 32
SECRET_LEN: Final[int] = 32

# message kinds on the control channel
CALL: Final = "call"  # agent -> daemon: a system call; always answered by a REPLY
NOTIFY: Final = "notify"  # agent -> daemon: no answer expected (signal delivered ack)
REPLY: Final = "reply"  # daemon -> agent: result, errno, or protocol error
EVENT: Final = "event"  # daemon -> agent: unsolicited (siginfo queued, shoot-down)
KINDS: Final = frozenset({CALL, NOTIFY, REPLY, EVENT})

# registration kinds
SPAWN: Final = "spawn"  # a new process, with standard descriptors 0, 1, 2
FORK: Final = "fork"  # the child of a fork announced by its parent (token)
EXEC: Final = "exec"  # the new image after execve (token)
KINDS_REGISTER: Final = frozenset({SPAWN, FORK, EXEC})
#: not a registration: the creator of queue pair ``qpn`` takes its ring and FIFOs,
#: passed with the answer by descriptor (``SCM_RIGHTS``); the daemon checks with
#: ``SO_PEERCRED`` that the caller is the creator
ATTACH_QP: Final = "attach-qp"
#: not a registration: a registered process takes its TLB word (the generation the
#: daemon bumps on every shoot-down, and the process's in-store mark), by descriptor
ATTACH_MM: Final = "attach-mm"

# protocol-level error reasons (machine-readable)
E_MALFORMED: Final = "malformed"
E_VERSION: Final = "version"
E_AUTH: Final = "auth"
E_REPLAY: Final = "replay"
E_TOO_LARGE: Final = "too-large"
E_BAD_ARGUMENTS: Final = "bad-arguments"
E_UNKNOWN_PROCESS: Final = "unknown-process"
E_BAD_TOKEN: Final = "bad-token"


def check_version(version: Any) -> None:
    """Refuse a peer whose protocol major version differs from ours (Jupyter's rule)."""
    if (
        not isinstance(version, list | tuple)
        or len(version) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in version)
    ):
        raise ProtocolError(E_MALFORMED, f"bad version field {version!r}")
    if version[0] != PROTOCOL_VERSION[0]:
        raise VersionMismatch(
            E_VERSION,
            f"peer speaks protocol {version[0]}.{version[1]}, this side speaks "
            f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}",
        )


#: the deepest nesting of lists and maps a message may have (a call's arguments are a
#: few levels deep at most; a thousand would break whatever walks them recursively,
#: the event log's JSON conversion for one)
MAX_DEPTH = 32
#: how the refusal of a frame nested too deep begins (the daemon names its request)
TOO_DEEP = "values nested deeper than"


def _unpack(data: bytes) -> Any:
    try:
        body = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True
        )
    except Exception as exc:  # msgpack raises many types for garbage
        raise ProtocolError(E_MALFORMED, f"undecodable msgpack ({type(exc).__name__})") from None
    if _too_deep(body, MAX_DEPTH):
        raise ProtocolError(E_MALFORMED, f"{TOO_DEEP} {MAX_DEPTH} levels")
    return body


def _too_deep(value: Any, limit: int) -> bool:
    """Is ``value`` nested deeper than ``limit`` lists and maps?  (Iterative: the
    check itself must not recurse on what it refuses.)"""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def pack(body: dict[str, Any]) -> bytes:
    """Serialise a message body with msgpack (bytes stay bytes, str stays str)."""
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def mac(payload: bytes, secret: bytes) -> bytes:
    """The message authentication code: keyed BLAKE2b with a 32-byte digest.

    BLAKE2's keyed mode is a MAC by design (RFC 7693) and one C call, about five times
    cheaper here than HMAC-SHA256, which costs a visible share of a round trip.
    """
    return hashlib.blake2b(payload, key=secret, digest_size=MAC_LEN).digest()


def seal(body: dict[str, Any], secret: bytes) -> bytes:
    """Encode ``body`` as one control frame: msgpack followed by its MAC."""
    payload = pack(body)
    return payload + mac(payload, secret)


def open_frame(frame: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    """Split a control frame into (body, payload, mac) without checking the MAC.

    The receiver looks up the sender's secret from ``body["pid"]`` and then calls
    :func:`verify`.  Raises :class:`ProtocolError` for anything that is not a
    well-formed message of a compatible version.
    """
    if len(frame) > MAX_FRAME:
        raise ProtocolError(E_TOO_LARGE, f"{len(frame)} bytes > {MAX_FRAME}")
    if len(frame) <= MAC_LEN:
        raise ProtocolError(E_MALFORMED, "frame shorter than its MAC")
    payload, mac = frame[:-MAC_LEN], frame[-MAC_LEN:]
    body = _unpack(payload)
    if not isinstance(body, dict):
        raise ProtocolError(E_MALFORMED, "message is not a map")
    check_version(body.get("v"))
    kind = body.get("k")
    if not isinstance(kind, str) or kind not in KINDS:
        raise ProtocolError(E_MALFORMED, f"unknown message kind {kind!r}")
    pid, seq = body.get("pid"), body.get("seq")
    if (not isinstance(pid, int) or isinstance(pid, bool) or not isinstance(seq, int)
            or isinstance(seq, bool)):
        raise ProtocolError(E_MALFORMED, "header lacks integer pid/seq")
    return body, payload, mac


def request_id(frame: bytes) -> int | None:
    """The ``id`` field of a frame refused before it was decoded (too large, too deep), read
    without building its other values, so the refusal names the request it refuses
    and its caller stops waiting; None if there is none to be read."""
    import io

    try:
        unpacker = msgpack.Unpacker(io.BytesIO(frame[:-MAC_LEN]), raw=False,
                                    max_buffer_size=len(frame))
        for _ in range(unpacker.read_map_header()):
            key = unpacker.unpack()
            if key == "id":
                rid = unpacker.unpack()
                return rid if isinstance(rid, int) and not isinstance(rid, bool) else None
            unpacker.skip()
    except Exception:  # garbage: msgpack raises many types
        return None
    return None


def verify(payload: bytes, tag: bytes, secret: bytes) -> bool:
    """True when ``tag`` is the MAC of ``payload`` under ``secret`` (constant time)."""
    return hmac.compare_digest(mac(payload, secret), tag)


# --- registration records ------------------------------------------------------------

_LEN = struct.Struct(">I")


def encode_record(body: dict[str, Any]) -> bytes:
    """Frame a registration record: 4-byte big-endian length, then msgpack."""
    payload = pack(body)
    return _LEN.pack(len(payload)) + payload


class RecordReader:
    """Reassembles length-prefixed registration records from a byte stream."""

    buf: bytearray
    limit: int

    def __init__(self, limit: int = MAX_RECORD) -> None:
        self.buf = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> dict[str, Any] | None:
        """Add bytes; return the next complete record, if any.  Raises ``ProtocolError``."""
        self.buf += data
        return self.next()

    def next(self) -> dict[str, Any] | None:
        """Take the next complete record out of the buffer, or return None."""
        if len(self.buf) < 4:
            return None
        (length,) = _LEN.unpack_from(self.buf)
        if length > self.limit:
            raise ProtocolError(E_TOO_LARGE, f"record of {length} bytes > {self.limit}")
        if len(self.buf) < 4 + length:
            return None
        payload = bytes(self.buf[4 : 4 + length])
        del self.buf[: 4 + length]
        body = _unpack(payload)
        if not isinstance(body, dict):
            raise ProtocolError(E_MALFORMED, "registration record is not a map")
        return body
