"""Experiment configs: one `get_config(arg=None)` per file, shared defaults in `common.py`."""
