"""User-facing errors: the CLI prints them as one line and exits with status 2."""
from __future__ import annotations

import difflib


class ZooError(Exception):
    """Bad input (config, path, checkpoint, argument). The message names what is wrong and how to fix it."""


class ConfigError(ZooError):
    """A config key, type or value is wrong."""


def suggest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def script_main(entry) -> None:
    """Run a script's ``entry()`` the way `zoo` runs a command: a ZooError ends in one line and exit status 2;
    otherwise ``entry()``'s return value (an exit status, or None)."""
    import sys

    try:
        return entry()
    except ZooError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
