"""REST API for API clients, mounted on the Reflex backend under `/api/v1`."""

from subscription_app.api.app import create_api

__all__ = ["create_api"]
