"""What the command-line entry points share: one-line errors and config-override flag parsing."""
from __future__ import annotations

import sys

from absl import flags


def fail(program: str, message: str, hint: str = "") -> None:
    """Print ``<program>: error: <message>`` (plus a hint line) to stderr and exit with code 1."""
    print(f"{program}: error: {message}" + (f"\n{hint}" if hint else ""), file=sys.stderr, flush=True)
    sys.exit(1)


def parse_flags(argv, program: str, verbose: bool, hint: str = ""):
    """absl's flag parsing; a ``--config.<key>`` override naming no existing key is one line naming the flag
    (ml_collections raises a bare AttributeError / KeyError with the key only). ``verbose``: re-raise instead."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.",
              file=sys.stderr)
        sys.exit(1)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if verbose:
            raise
        key = str(e).strip("\"'")
        overrides = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
        culprit = next((a for a in overrides if a.split(".")[-1] == key or f".{key}." in a + "."), None)
        fail(program, f"{culprit}: unknown config key {key!r}" if culprit else f"--config: {type(e).__name__}: {e}",
             hint)
