"""``python -m fedsweep.tune SWEEP_FILE …``: a sweep (``fedsweep tune``, see ``fedsweep.cli``)."""

import sys

from fedsweep.cli import tune_main

if __name__ == "__main__":
    sys.exit(tune_main())
