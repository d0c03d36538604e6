"""Faust wiring, the worker process and embedded services."""
