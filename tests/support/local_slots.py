"""A saturated Local system: a one-slot system whose slot is held from outside the daemon.

Used by the claim tests (``tests/test_submit_claims.py``) and the engine benchmark's scale phase
(``benchmarks/engine.py``): jobs routed to ``busy`` wait for a slot for as long as the caller
keeps the descriptor of :func:`hold_local_slot` open.
"""

from __future__ import annotations

from pathlib import Path

from execution_engine.systems.local_slots import SlotPool

BUSY_SYSTEM = """\
    [[busy]]
    # A saturated system: its only slot is held from outside (hold_local_slot).
    class = local
    slots = 1
    slot_wait = 0

    [routes]
    [[busy]]
    system = busy
    rules = project_in
    [[[project_in]]]
    projects = busy
    [[default]]
    system = local
    """
"""Configuration lines (indented, to be dedented) appended to a ``[systems]`` section: the
one-slot Local system ``busy``, the route of project ``busy`` to it, and the default route."""


def hold_local_slot(state_dir: Path, system: str) -> int:
    """Take the only slot of the one-slot Local system ``system`` of the daemon whose state
    directory is ``state_dir``, as a running job of it would: the system then has no room until
    the returned descriptor is closed."""
    fd = SlotPool(state_dir / "systems" / system / "slots", 1).try_acquire()
    if fd is None:
        raise RuntimeError(f"the slot of Local system {system} is already taken")
    return fd
