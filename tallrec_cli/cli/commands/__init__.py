"""One module per command or command group; each defines ``app = command_app(...)`` and its commands as
module-level functions on it (see ``_common``), which cli.py adds to the root app."""
