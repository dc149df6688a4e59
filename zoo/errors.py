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
    except OSError as e:  # a file the script reads or writes (a full disk, a path that vanished)
        print(f"error: {e.strerror or e}: {e.filename or ''}; free the disk or pick another path", file=sys.stderr)
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


def out_file(text: str):
    """An argparse ``type`` for ``--out``: a file that can be written, checked before the work (which may take
    hours) rather than after it; else argparse's usage error."""
    import argparse
    import os
    from pathlib import Path

    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; give a file path such as {path / 'out.json'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:  # the folders the script will create
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"{text} cannot be written here; pick another path")
    return path
