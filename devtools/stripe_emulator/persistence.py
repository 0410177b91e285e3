"""Persistence: the emulator's state file, saved after each change and loaded at start.

Replaces localstripe's hard-coded ``/tmp/localstripe.pickle`` (see
:func:`devtools.stripe_emulator.server.install`); the format stays localstripe's.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile

DEFAULT_STATE_FILE = os.path.join(tempfile.gettempdir(), "subscription_app_stripe_emulator.pickle")

log = logging.getLogger("devtools.stripe_emulator")


class _Persistence:
    path: str | None = DEFAULT_STATE_FILE


def _load_state(self) -> None:
    if _Persistence.path is None:
        return
    try:
        with open(_Persistence.path, "rb") as f:
            # Our own state file, written by _dump_state (localstripe's format).
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


def _dump_state(self) -> None:
    if _Persistence.path is None:
        return
    # Write-then-rename so an interrupted dump never leaves a torn file.
    tmp = _Persistence.path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, _Persistence.path)
