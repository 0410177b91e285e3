"""Reflex states: thin layers that authenticate, call services and hold what pages show."""
