"""``python -m devtools.stripe_emulator [--port N] [--host H] ...``: serve the emulator.

See :func:`devtools.stripe_emulator.server.main` (``--help`` lists the options).
"""

from devtools.stripe_emulator.server import main

if __name__ == "__main__":
    main()
