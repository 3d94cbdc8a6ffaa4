"""Runs the service pair locally for `make run` and `make demo`."""
