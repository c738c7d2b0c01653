"""One run: compose and check a config, build its components, run the round loop, log and checkpoint."""
