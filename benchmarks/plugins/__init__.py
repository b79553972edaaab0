"""Drop-in systems plugins of the benchmarks (a ``[plugins] systems`` folder: every module here
whose name does not start with ``_`` is loaded by the engine's plugin loader)."""
