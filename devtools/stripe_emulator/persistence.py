"""Persistence: the emulator's state file, saved in the background and on a clean stop.

Replaces localstripe's hard-coded ``/tmp/localstripe.pickle`` (see
:func:`devtools.stripe_emulator.server.install`); the format stays localstripe's
(a pickled store, loaded with ``store.update``).

localstripe saves the whole store after every write (``Store.__setitem__``,
``__delitem__`` and its save-store middleware all call ``dump_to_disk``), so a
write cost as much as pickling everything stored: about 200 ms per pickle at
10,000 customers, several per request. Here ``dump_to_disk`` only marks the
store dirty (:func:`_mark_dirty`), and :func:`persistence_ctx` (an aiohttp
cleanup context) saves it:

* in the background, at most every :data:`SAVE_INTERVAL` seconds while there
  are unsaved changes: the server forks (:func:`os.fork`) and the child pickles
  its copy-on-write view of the store and writes it (niced, collector off),
  so requests only pay for the fork (about 5 ms at 10,000 customers) and the
  page copies of copy-on-write for the pages they touch (no request touches
  every stored object since the store is indexed, see
  :mod:`devtools.stripe_emulator.index`), at most once per interval, never for
  the pickling; one snapshot runs at a time. Where ``os.fork`` does not exist the
  snapshot is taken in the server's thread instead, which stalls requests
  while it runs;
* on a clean stop (SIGTERM/SIGINT, which ``web.run_app`` turns into a graceful
  shutdown, as :meth:`EmulatorProcess.stop` sends): it waits for a running
  snapshot, then saves whatever changed since, in the server's own process.
  A clean stop loses nothing.

What a crash loses (SIGKILL, a power cut, an exception killing the process):
the writes since the last snapshot that finished, i.e. at most the last
:data:`SAVE_INTERVAL` (1 s) plus the time one snapshot takes (about 0.25 s at
10,000 customers), so the last second or so. Files are written then
renamed, so the state file is always a whole snapshot, never a torn one; they
are not fsynced, so an OS crash may lose more. A snapshot taken while an
asynchronous handler waits halfway through (webhook releases) holds what that
handler had done so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import signal
import tempfile
import traceback
from collections.abc import AsyncIterator

from aiohttp import web

from devtools.stripe_emulator.common import ls
from devtools.stripe_emulator.index import index_of

DEFAULT_STATE_FILE = os.path.join(tempfile.gettempdir(), "subscription_app_stripe_emulator.pickle")

# Seconds between background snapshots while there are unsaved changes.
SAVE_INTERVAL = 1.0

log = logging.getLogger("devtools.stripe_emulator")


class _Persistence:
    path: str | None = DEFAULT_STATE_FILE
    # Changes since the last snapshot was taken (not necessarily finished).
    dirty = False
    # The pid of the child writing a snapshot, if one is running.
    child: int | None = None


def _load_state(self) -> None:
    if _Persistence.path is None:
        return
    try:
        with open(_Persistence.path, "rb") as f:
            # Our own state file, written by _write_state (localstripe's format).
            old = pickle.load(f)  # noqa: S301
    except FileNotFoundError:
        return
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        AttributeError,
        ImportError,
    ) as e:
        # An unreadable or incompatible state file must not keep us down.
        log.warning("Ignoring unreadable state file %s: %s", _Persistence.path, e)
        return
    self.clear()
    self.update(old)
    # Index what was loaded now rather than in the first request (and before freezing).
    index_of(self)
    # Unpickling a Store calls __setitem__ per object; what was loaded is saved already.
    _Persistence.dirty = False
    # Long-lived from now on: keep the collector's full passes (and their pauses) from
    # walking the whole loaded state again and again.
    gc.freeze()


def _mark_dirty(self) -> None:
    """``Store.dump_to_disk``: remember there is something to save, nothing more."""
    _Persistence.dirty = True


def _write_state(store: dict, path: str) -> None:
    # Write-then-rename so an interrupted dump never leaves a torn file; the
    # temporary name is per process, as a snapshot child and its parent may both write.
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            pickle.dump(store, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _snapshot_in_child(store: dict, path: str) -> int:
    """Fork; the child writes its copy-on-write view of ``store`` and exits."""
    pid = os.fork()
    if pid:
        return pid
    # The child: never return into the parent's event loop, run no atexit handlers.
    code = 1
    try:
        # Signals are the parent's business: do not forward them through asyncio's
        # wakeup fd, and let a Ctrl-C reaching the whole group not cut the write short.
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # A collection would touch every object's header, copying the pages it shares
        # with the server; and the server's requests come first on a busy machine.
        gc.disable()
        os.nice(10)
        _write_state(store, path)
        code = 0
    except BaseException:
        # Not logging: its locks may have been held by another thread at fork time.
        with contextlib.suppress(BaseException):
            os.write(2, traceback.format_exc().encode(errors="replace"))
    finally:
        os._exit(code)


def _reap(block: bool) -> None:
    """Collect the snapshot child if it exited (wait for it with ``block``)."""
    if _Persistence.child is None:
        return
    pid, status = os.waitpid(_Persistence.child, 0 if block else os.WNOHANG)
    if pid == 0:
        return
    _Persistence.child = None
    if os.waitstatus_to_exitcode(status) != 0:
        log.warning("Saving the state to %s failed; retrying", _Persistence.path)
        _Persistence.dirty = True


def _save_in_background(store: dict, path: str) -> None:
    _reap(block=False)
    if not _Persistence.dirty or _Persistence.child is not None:
        return
    _Persistence.dirty = False
    if hasattr(os, "fork"):
        _Persistence.child = _snapshot_in_child(store, path)
    else:
        _write_state(store, path)


def save_now() -> None:
    """Wait for a running snapshot, then save the store if it changed since."""
    _reap(block=True)
    if _Persistence.path is not None and _Persistence.dirty:
        _Persistence.dirty = False
        _write_state(ls.store, _Persistence.path)


async def _save_periodically(path: str) -> None:
    while True:
        await asyncio.sleep(SAVE_INTERVAL)
        try:
            _save_in_background(ls.store, path)
        except Exception:
            _Persistence.dirty = True
            log.exception("Saving the state to %s failed; retrying", path)


async def persistence_ctx(app: web.Application) -> AsyncIterator[None]:
    """aiohttp cleanup context: background snapshots while serving, a last save on stop."""
    path = _Persistence.path
    if path is None:
        yield
        return
    saver = asyncio.create_task(_save_periodically(path))
    try:
        yield
    finally:
        saver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saver
        save_now()
