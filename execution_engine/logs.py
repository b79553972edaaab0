"""One log for every process of the daemon.

Every process sends its records through a multiprocessing queue to the log receiver process,
which writes them to one file (reopened when logrotate moves it) and mails CRITICAL records to
the administrator when ``[engine] mail_critical_to`` is set. Each line names the process and, when
the record is about a job, the job.

The queue (:class:`LogQueue`) has one reader, the receiver, which holds the queue's reader lock
while it waits for a record. A receiver killed by SIGKILL cannot release it: the master frees it
(:meth:`LogQueue.reader_gone`) before it starts the replacement, which would otherwise wait for
the lock forever while every record piled up unread.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import multiprocessing.queues
import signal
import sys
from pathlib import Path
from typing import Any

from setproctitle import setproctitle

from execution_engine.proc import die_with_parent


class LogQueue(multiprocessing.queues.Queue):
    """The daemon's log queue: many writers, one reader (the log receiver)."""

    def reader_gone(self) -> None:
        """The reader died: free the reader lock it may have held (a multiprocessing lock is
        a semaphore, which any process may post), so that the next reader can take it."""
        self._rlock.acquire(block=False)  # type: ignore[attr-defined]
        self._rlock.release()  # type: ignore[attr-defined]


FORMAT = "%(asctime)s %(processName)s[%(process)d] %(levelname)s job=%(job)s %(message)s"


class JobField(logging.Filter):
    """Gives every record a ``job`` attribute ("-" when the record is not about a job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job"):
            record.job = "-"
        return True


def job_extra(job_id: object) -> dict[str, Any]:
    """``extra=`` for a log call about one job."""
    return {"job": str(job_id)}


def log_to_queue(queue: Any, level: str, process_name: str) -> None:
    """Send this process's records to the log receiver."""
    multiprocessing.current_process().name = process_name
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.handlers.QueueHandler(queue)
    root.addHandler(handler)
    root.setLevel(level)
    # The driver's own DEBUG records (one per command) would drown the engine's.
    logging.getLogger("pymongo").setLevel(logging.WARNING)


def file_handlers(log_file: Path, *, mail_critical_to: str = "", smtp_host: str = "",
                  smtp_port: int = 25, sender: str = "execd@localhost",
                  echo: bool = False) -> list[logging.Handler]:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = [logging.handlers.WatchedFileHandler(log_file)]
    if echo:
        handlers.append(logging.StreamHandler(sys.stderr))
    if mail_critical_to and smtp_host:
        mail = logging.handlers.SMTPHandler(
            (smtp_host, smtp_port), sender, [mail_critical_to], "execd: critical error"
        )
        mail.setLevel(logging.CRITICAL)
        handlers.append(mail)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(JobField())
    return handlers


def receive_logs(queue: Any, handler_args: dict[str, Any]) -> None:
    """Main of the log receiver process: write every record from ``queue`` until a None."""
    die_with_parent(signal.SIGKILL)  # nothing to flush once the master is gone
    setproctitle("execd: log-receiver")
    multiprocessing.current_process().name = "log-receiver"
    # The master decides when this process ends (it sends None); a terminal's ^C is not for us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    handlers = file_handlers(**handler_args)
    while True:
        try:
            record = queue.get()
        except Exception as exc:  # a record that cannot be unpickled: say so, go on
            record = logging.makeLogRecord({"msg": f"unreadable log record: {exc!r}",
                                            "levelno": logging.ERROR, "levelname": "ERROR"})
        if record is None:
            break
        for handler in handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
    for handler in handlers:
        handler.close()
