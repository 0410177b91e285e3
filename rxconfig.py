"""Reflex configuration. App settings live in `subscription_app/settings.py`."""

import reflex as rx

from subscription_app.settings import get_settings

_settings = get_settings()

config = rx.Config(
    app_name="subscription_app",
    # With REDIS_URL set, state lives in Redis so several backend workers can share it.
    redis_url=_settings.redis_url,
    telemetry_enabled=False,
    show_built_with_reflex=False,
    plugins=[rx.plugins.RadixThemesPlugin(theme=rx.theme(accent_color="indigo", radius="medium"))],
    disable_plugins=[rx.plugins.SitemapPlugin],
)
