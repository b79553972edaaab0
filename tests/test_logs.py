"""The log queue survives its reader's SIGKILL: the reader lock it held is freed for the next."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from queue import Empty

import pytest

from execution_engine.logs import LogQueue


def read_one(queue: LogQueue) -> None:
    queue.get()


def test_a_reader_killed_while_waiting_leaves_the_queue_usable() -> None:
    ctx = multiprocessing.get_context("spawn")
    queue = LogQueue(ctx=ctx)
    reader = ctx.Process(target=read_one, args=(queue,))
    reader.start()
    time.sleep(1.0)  # the reader now waits in get(), holding the reader lock
    assert reader.pid is not None
    os.kill(reader.pid, signal.SIGKILL)
    reader.join()
    queue.put("after")
    with pytest.raises(Empty):  # the dead reader holds the lock: nobody can read
        queue.get(timeout=1.0)
    queue.reader_gone()
    assert queue.get(timeout=5) == "after"
    queue.reader_gone()  # with the lock free, it stays free
    queue.put("again")
    assert queue.get(timeout=5) == "again"
