"""Submitting a workload the way a portal does, and following its jobs to their end.

The runner only talks to MongoDB, through the documented job contract: it inserts job documents
in state ``to be built``, sets ``cancel_requested`` on the jobs the workload cancels (when it says
so), and reads their state. Every job it inserts carries
``metadata.sim_run`` (the run id) and ``metadata.inserted_at`` (when it was inserted), so that the
counts and the report cover this run's jobs only, even on a busy database.
"""

from __future__ import annotations

import heapq
import time
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from pymongo.collection import Collection

from sim.progress import Progress
from sim.report import ENDED, NOTIFIED, PROJECTION
from sim.workload import Workload

POLL = 0.2
"""Seconds between two looks at the jobs while waiting for them to end."""


class Runner:
    def __init__(self, jobs: Collection[Any], run_id: str, progress: Progress) -> None:
        self.jobs = jobs
        self.run_id = run_id
        self.progress = progress
        # Every id this process makes from now on is greater: a cheap range on the _id index
        # that the run tag then filters (other clients' jobs may interleave).
        self.first_id = ObjectId()
        self.submitted = 0
        self.max_lag = 0.0
        self.cancel_requests = 0
        self._cancels: list[tuple[float, ObjectId]] = []
        """Cancellations to write: (when, on the monotonic clock; job id), a heap."""
        self._counts: dict[str, int] = {}
        self._done = 0

    @property
    def query(self) -> dict[str, Any]:
        return {"_id": {"$gte": self.first_id}, "metadata.sim_run": self.run_id}

    # ------------------------------------------------------------------ submitting
    def submit(self, workload: Workload) -> None:
        """Insert each wave at its time, and request each cancellation of the workload at its
        time (returning after the last one). KeyboardInterrupt stops it (what was inserted
        stays; cancellations not yet due are not written)."""
        start = time.monotonic()
        for wave in workload.waves:
            self._sleep_until(start + wave.at)
            self.max_lag = max(self.max_lag, time.monotonic() - start - wave.at)
            self.insert(wave.jobs)
            inserted = time.monotonic()
            for index, delay in wave.cancels.items():
                heapq.heappush(self._cancels, (inserted + delay, wave.jobs[index]["_id"]))
            self._cancel_due()
            if self.progress.due():
                self.refresh()
        while self._cancels:
            self._sleep_until(self._cancels[0][0])

    def _cancel_due(self) -> None:
        """Write the cancellations that are due (as a client does: the job contract's
        ``cancel_requested``; the engine ignores it on a job that already ended)."""
        now = time.monotonic()
        while self._cancels and self._cancels[0][0] <= now:
            _, job_id = heapq.heappop(self._cancels)
            self.jobs.update_one({"_id": job_id}, {"$set": {"cancel_requested": True}})
            self.cancel_requests += 1

    def insert(self, docs: list[dict[str, Any]]) -> None:
        now = datetime.now(UTC)
        for doc in docs:
            doc["_id"] = ObjectId()
            doc["metadata"] = {**doc.get("metadata", {}), "sim_run": self.run_id,
                               "inserted_at": now}
        if len(docs) == 1:
            self.jobs.insert_one(docs[0])
        elif docs:
            self.jobs.insert_many(docs, ordered=False)
        self.submitted += len(docs)

    def _sleep_until(self, deadline: float) -> None:
        """Wait until ``deadline`` (monotonic clock), writing cancellations as they fall due."""
        while True:
            self._cancel_due()
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                return
            if self.progress.due():
                self.refresh()
            next_cancel = self._cancels[0][0] - now if self._cancels else left
            time.sleep(max(0.0, min(left, POLL, next_cancel)))

    # ------------------------------------------------------------------ following
    def count(self) -> tuple[dict[str, int], int]:
        """Jobs of the run per state, and how many are done (ended and notified)."""
        pipeline = [
            {"$match": self.query},
            {"$group": {"_id": {"state": "$state", "notification": "$notification.state"},
                        "n": {"$sum": 1}}},
        ]
        counts: dict[str, int] = {}
        done = 0
        for row in self.jobs.aggregate(pipeline):
            state = str(row["_id"].get("state"))
            counts[state] = counts.get(state, 0) + row["n"]
            if state in ENDED and row["_id"].get("notification") in NOTIFIED:
                done += row["n"]
        self._counts, self._done = counts, done
        return counts, done

    def refresh(self) -> None:
        self.count()
        self.progress.show(self.submitted, self._counts, self._done)

    def wait(self, timeout: float) -> bool:
        """Wait until every submitted job ended and was notified; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            _, done = self.count()
            if self.progress.due() or done >= self.submitted:
                self.progress.show(self.submitted, self._counts, done)
            if done >= self.submitted:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)

    def documents(self) -> list[dict[str, Any]]:
        """The run's job documents (the fields the report needs)."""
        return list(self.jobs.find(self.query, PROJECTION))
