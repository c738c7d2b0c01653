"""``python -m fedsweep.tune SWEEP_FILE …``: a sweep (``fedsweep tune``, see ``fedsweep.cli``)."""

from fedsweep.cli import exit_now, tune_main

if __name__ == "__main__":
    exit_now(tune_main())
