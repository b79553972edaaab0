"""Process helpers: a child whose parent dies while it is still starting does not live on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from execution_engine.proc import is_running

# A parent that starts a child (the spawn start method, as the daemon does) and dies at once; the
# child asks to die with its parent only after the parent is gone (slow start-up), then would
# wait a long time.
SCRIPT = textwrap.dedent("""\
    import multiprocessing, os, sys, time

    def child(pid_file):
        with open(pid_file, "w") as f:
            f.write(str(os.getpid()))
        while os.getppid() == multiprocessing.parent_process().pid:
            time.sleep(0.01)  # until the parent is gone
        from execution_engine.proc import die_with_parent
        die_with_parent()
        time.sleep(60)

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("spawn")
        ctx.Process(target=child, args=(sys.argv[1],)).start()
        while not os.path.exists(sys.argv[1]) or not open(sys.argv[1]).read():
            time.sleep(0.01)
        os._exit(0)
""")


def test_a_child_whose_parent_died_before_it_asked_to_die_with_it_ends(tmp_path: Path) -> None:
    script = tmp_path / "orphan.py"
    script.write_text(SCRIPT)
    pid_file = tmp_path / "child.pid"
    subprocess.run([sys.executable, str(script), str(pid_file)], check=True, timeout=60)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 15
    while is_running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = is_running(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "the orphan lives on"
