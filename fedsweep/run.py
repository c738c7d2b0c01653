"""``python -m fedsweep.run key=value …``: one experiment (``fedsweep run``, see ``fedsweep.cli``)."""

import sys

from fedsweep.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main())
