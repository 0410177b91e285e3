"""Reflex configuration. App settings live in `subscription_app/settings.py`."""

import os

import reflex as rx

from subscription_app.security import allowed_origins
from subscription_app.settings import get_settings

_settings = get_settings()

# The backend worker count (`Settings.server_workers`), exported before `reflex run --env prod`
# starts granian, which reads GRANIAN_WORKERS; the workers inherit it, so their settings (the
# Redis check, the webhook processor's pacing) count the very workers that run. The settings
# read above are read again: granian forks its workers from this process, cache included.
if (_workers := _settings.server_workers) is not None:
    os.environ["GRANIAN_WORKERS"] = str(_workers)
    get_settings.cache_clear()
    _settings = get_settings()
elif not os.environ.get("GRANIAN_WORKERS", "x").strip():
    # Set but empty: unset, as the settings read it (Reflex would fail on int("")).
    del os.environ["GRANIAN_WORKERS"]

config = rx.Config(
    app_name="subscription_app",
    # With REDIS_URL set, state lives in Redis so several backend workers can share it.
    redis_url=_settings.redis_url,
    # Browsers may call the API and open the websocket only from the app's own origin
    # (Reflex's default, "*", would let any site make credentialed calls and read the answers).
    cors_allowed_origins=allowed_origins(_settings),
    telemetry_enabled=False,
    show_built_with_reflex=False,
    plugins=[rx.plugins.RadixThemesPlugin(theme=rx.theme(accent_color="indigo", radius="medium"))],
    disable_plugins=[rx.plugins.SitemapPlugin],
)
