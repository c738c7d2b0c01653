"""The ``fedsweep`` command: ``fedsweep run key=value …`` and ``fedsweep tune sweeps/x.yaml …``
(the same as ``python -m fedsweep.run`` and ``python -m fedsweep.tune``)."""

from __future__ import annotations

import sys

USAGE = "usage: fedsweep run [key=value ...] | fedsweep tune SWEEP_FILE [key=value ...] [--name NAME] [--results DIR]"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("run", "tune"):
        print(USAGE, file=sys.stderr)
        return 0 if args and args[0] in ("-h", "--help") else 2
    if args[0] == "run":
        from fedsweep import run

        return run.main(args[1:])
    from fedsweep import tune

    return tune.main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
