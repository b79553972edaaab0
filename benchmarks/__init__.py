"""The engine's benchmarks, run by hand from a checkout (``python -m benchmarks.engine``,
``benchmarks.ab``, ``benchmarks.clusters``; see docs/benchmark.md). Not installed with the
package: they measure a checkout, and share its test support modules (``tests/``)."""
