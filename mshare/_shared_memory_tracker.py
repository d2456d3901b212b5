"""The tracker behind ``mshare.shared_memory``'s ``track=True``: blocks a program created
and did not unlink are unlinked once that whole program has ended, however it ended.

A *program* is the process that first created a tracked block plus its ``multiprocessing``
children: forked ones inherit its connection to the tracker (and connect again themselves
to register), spawned ones connect by the socket name their parent left in
``MSHARE_SHARED_MEMORY_TRACKER``; a child that starts the tracker has it wait for its
parent too. A ``subprocess`` child is a program of its own. The tracker
is a separate process listening on an abstract Unix socket; when the last connection
closes (every process of the program has exited, by ``exit``, exception or signal), it
unlinks what is still registered and says so on stderr, then exits.

Only creators register, so an attacher never unlinks anything (unlike the stdlib's
resource tracker, CPython gh-82300). Registrations are untrusted input: the tracker talks
only to peers of its own user, and at the end unlinks a region only if it still has the
address and creation time it was registered with and was created by the very process
that registered it (its pid as the kernel reports it, ``SO_PEERCRED``), so a name
unlinked and created again by someone else, or a block some other process made, is left
alone.
"""

import json
import multiprocessing
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import warnings
from typing import Any, Dict, Final, List, Optional, Tuple, TypedDict

import mshare

ENVIRONMENT_VARIABLE: Final = "MSHARE_SHARED_MEMORY_TRACKER"
# The stdlib's resource tracker words its leak warning so; programs (and CPython's own
# tests) that watch stderr for leaked blocks look for this sentence.
LEAK_WARNING: Final = "resource_tracker: There appear to be {count} leaked shared_memory objects " \
               "to clean up at shutdown"
MAX_MESSAGE_BYTES: Final = 4096

_lock = threading.Lock()
# A bare descriptor, not a socket object: it stays open until the process ends, on
# purpose, and a socket object collected at exit would warn that it was left open.
_connection_fd: Optional[int] = None
_connection_pid: Optional[int] = None
_connection_address: Optional[str] = None
# A registered region: (registry, name, addr, created); the tracker maps each to the pid
# of the process that registered it.
RegionKey = Tuple[str, str, int, float]


class Peer(TypedDict):
    """A connected process: its pid (``SO_PEERCRED``) and the start of a message."""

    pid: int
    pending: bytes


def _after_fork_in_child() -> None:
    global _lock, _connection_pid
    # The parent's connection stays open in the child on purpose: it keeps the program
    # alive while the child lives. The child opens its own to register, since the tracker
    # checks that the region's creator is the peer that sends the registration.
    _lock = threading.Lock()
    _connection_pid = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def register(name: str, registry_path: str, addr: int, created: float) -> None:
    """Have the program's tracker unlink region ``name`` if it is still there at the end."""
    _send({"op": "register", "name": name, "registry": registry_path, "addr": addr,
           "created": created})


def unregister(name: str, registry_path: str, addr: int, created: float) -> None:
    """The block was unlinked by its program: nothing is left for the tracker to do."""
    _send({"op": "unregister", "name": name, "registry": registry_path, "addr": addr,
           "created": created})


def _send(message: Dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"tracker message for {message['name']!r} is too long")
    # No reply is awaited: a Unix stream socket queues what write() took straight onto the
    # tracker's side, which reads it before the end of the connection even when this
    # process is killed the next instant, so once create() returns the block is
    # registered. A reply would cost a wake-up of the tracker's CPU on every create.
    with _lock:
        try:
            _write_all(_connected(), data)
        except (BrokenPipeError, ConnectionResetError):
            # The tracker was killed (by the OOM killer, say): the blocks it held are no
            # longer unlinked at the end, but this one and later ones get a new tracker
            # rather than failing from now on.
            _forget_connection()
            warnings.warn("mshare.shared_memory: this program's tracker is gone; blocks "
                          "registered with it before now will not be unlinked when the "
                          "program ends", RuntimeWarning, stacklevel=4)
            _write_all(_connected(), data)


def _write_all(fd: int, data: bytes) -> None:
    # MSG_NOSIGNAL: a program that restored SIGPIPE's default action is not killed when
    # the tracker is gone; it gets BrokenPipeError.
    connection = socket.socket(fileno=fd)
    try:
        connection.sendall(data, socket.MSG_NOSIGNAL)
    finally:
        connection.detach()


def _forget_connection() -> None:
    global _connection_fd, _connection_pid, _connection_address
    if _connection_fd is not None and _connection_pid == os.getpid():
        os.close(_connection_fd)
    _connection_fd = _connection_pid = _connection_address = None


def _connected() -> int:
    global _connection_fd, _connection_pid, _connection_address
    if _connection_pid == os.getpid() and _connection_fd is not None:
        return _connection_fd
    connection: Optional[socket.socket] = None
    address = _connection_address or _address_of_parent_program()
    if address:
        try:
            connection = _connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            connection = None  # that program's tracker is gone: this process starts anew
    if connection is None:
        address, connection = _start_tracker()
    os.environ[ENVIRONMENT_VARIABLE] = f"{os.getpid()}:{address}"
    _connection_fd, _connection_pid, _connection_address = connection.detach(), os.getpid(), address
    return _connection_fd


def _address_of_parent_program() -> Optional[str]:
    """The tracker a spawned ``multiprocessing`` child joins: its parent's, which the
    parent left in the environment. Other children (``subprocess``) are programs of
    their own, as they are for the stdlib's resource tracker."""
    parent = multiprocessing.parent_process()
    announced = os.environ.get(ENVIRONMENT_VARIABLE, "")
    pid, _, address = announced.partition(":")
    if parent is None or not address or pid != str(parent.pid):
        return None
    return address


def _connect(address: str) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect("\0" + address)
    except BaseException:
        connection.close()
        raise
    return connection


def _start_tracker() -> Tuple[str, socket.socket]:
    """``(address, connection)`` of a new tracker, already connected to it."""
    address = f"mshare-shared-memory-{os.getpid()}-{os.urandom(8).hex()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection: Optional[socket.socket] = None
    try:
        listener.bind("\0" + address)
        listener.listen(64)
        # Connected before the tracker starts, so its first accept() cannot wait for a
        # process that died in between.
        connection = _connect(address)
        parent_fd = _parent_pidfd()
        watched = (listener.fileno(),) if parent_fd is None else (listener.fileno(), parent_fd)
        # The tracker imports the same mshare as this process, never one that happens to
        # lie in its working directory.
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (f"import sys; sys.path.insert(0, {package_parent!r}); "
                f"from mshare._shared_memory_tracker import main; main(*{watched!r})")
        try:
            # The tracker forks and its first process exits at once (waited for here), so
            # no child of this process outlives it unwaited.
            starter = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=watched,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True,
            )
            if starter.wait() != 0:
                raise OSError(f"the shared_memory tracker did not start (exit code {starter.returncode})")
        finally:
            if parent_fd is not None:
                os.close(parent_fd)
    except BaseException:
        if connection is not None:
            connection.close()
        raise
    finally:
        listener.close()
    return address, connection


def _parent_pidfd() -> Optional[int]:
    """A pidfd of this process's parent when this is a ``multiprocessing`` child: a
    worker that creates the program's first tracked block must not take the block with
    it when it exits, while the rest of the program runs on."""
    parent = multiprocessing.parent_process()
    if parent is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        pidfd = os.pidfd_open(parent.pid)
    except OSError:
        return None
    # Still our parent after the pidfd was opened, so the pid was not reused meanwhile.
    if os.getppid() != parent.pid:
        os.close(pidfd)
        return None
    return pidfd


# -- the tracker process -------------------------------------------------------------------


def main(listener_fd: int, parent_pidfd: Optional[int] = None) -> None:
    """Serve registrations until the program's last connection closes (and the process
    behind ``parent_pidfd`` has exited), then clean up."""
    if os.fork():
        os._exit(0)  # the starting process waits for this one, not for the tracker
    # Ctrl-C and a SIGTERM meant for the program must not take its cleanup down with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    listener = socket.socket(fileno=listener_fd)
    registered: Dict[RegionKey, int] = {}
    selector = selectors.DefaultSelector()
    # The starting process connected before starting this one.
    _accept(listener, selector)
    selector.register(listener, selectors.EVENT_READ)
    if parent_pidfd is not None:
        # A pidfd turns readable when its process exits.
        selector.register(parent_pidfd, selectors.EVENT_READ)
    while len(selector.get_map()) > 1:
        for key, _ in selector.select():
            if key.fileobj is listener:
                _accept(listener, selector)
            elif key.fileobj == parent_pidfd:
                selector.unregister(parent_pidfd)
                os.close(parent_pidfd)
            else:
                _serve(key.fileobj, key.data, selector, registered)
    listener.close()
    _clean_up(registered)


def _accept(listener: socket.socket, selector: selectors.BaseSelector) -> None:
    connection, _ = listener.accept()
    pid, uid, _gid = struct.unpack("3i", connection.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid != os.geteuid():
        connection.close()
        return
    peer: Peer = {"pid": pid, "pending": b""}
    selector.register(connection, selectors.EVENT_READ, peer)


def _serve(connection: socket.socket, peer: Peer, selector: selectors.BaseSelector,
           registered: Dict[RegionKey, int]) -> None:
    try:
        data = connection.recv(MAX_MESSAGE_BYTES)
    except ConnectionResetError:
        data = b""
    if not data:
        selector.unregister(connection)
        connection.close()
        return
    peer["pending"] += data
    *lines, peer["pending"] = peer["pending"].split(b"\n")
    if len(peer["pending"]) > MAX_MESSAGE_BYTES:
        selector.unregister(connection)
        connection.close()
        return
    for line in lines:
        _handle(line, peer["pid"], registered)


def _handle(line: bytes, peer_pid: int, registered: Dict[RegionKey, int]) -> None:
    """Record one message. One that is not well formed is dropped: only this user's
    processes may connect, and mshare's own never send one."""
    try:
        message = json.loads(line)
        key = (str(message["registry"]), str(message["name"]), int(message["addr"]),
               float(message["created"]))
        operation = message["op"]
    except (ValueError, KeyError, TypeError):
        return
    if operation == "unregister":
        registered.pop(key, None)
    elif operation == "register":
        # Checked at the end, not here, to keep create() fast: the region must then still
        # be the one registered, created by this peer.
        registered[key] = peer_pid


def _current_region(key: RegionKey, creator_pid: int) -> Optional[mshare.RegionInfo]:
    """The region ``key`` names if it is still the one registered, made by
    ``creator_pid``, else ``None``."""
    registry, name, addr, created = key
    # A registry removed since is not made again just to look into it.
    if not os.path.isdir(registry):
        return None
    os.environ["MSHARE_ROOT"] = registry
    try:
        region = mshare.info(name)
    except (OSError, ValueError):
        return None
    if (region.addr, region.created, region.creator_pid) != (addr, created, creator_pid):
        return None
    return region


def _clean_up(registered: Dict[RegionKey, int]) -> None:
    leaked: List[str] = []
    for key, creator_pid in registered.items():
        if _current_region(key, creator_pid) is None:
            continue
        try:
            mshare.unlink(key[1])
        except OSError as error:
            sys.stderr.write(f"mshare.shared_memory: cannot unlink {key[1]!r}: {error}\n")
            continue
        leaked.append(key[1])
    if leaked:
        sys.stderr.write(
            "mshare.shared_memory " + LEAK_WARNING.format(count=len(leaked))
            + f"; unlinked: {', '.join(leaked)}\n"
        )
        sys.stderr.flush()
