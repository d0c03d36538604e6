"""Load generator, benchmark and profiling helpers for streamproc (not shipped)."""
