"""``python -m fedsweep.run key=value …``: one experiment (``fedsweep run``, see ``fedsweep.cli``)."""

from fedsweep.cli import exit_now, run_main

if __name__ == "__main__":
    exit_now(run_main())
