"""Execution systems: where jobs run (Local, Grid Engine, Torque/PBS, Slurm)."""
