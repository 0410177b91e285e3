"""Developer tooling (local Stripe emulator, helper scripts); not shipped with the app."""
