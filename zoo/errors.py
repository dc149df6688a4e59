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


def positive(cast=int):
    """An argparse ``type``: a finite number above 0 (rounds, seconds, threads), else argparse's usage error."""
    import argparse
    import math

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if cast is int else 'a number'}") \
                from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"{text} must be above 0")
        return value
    return parse
