"""Sweeps: sweep files and search spaces, the Ray Tune driver and its trials, the reports."""
