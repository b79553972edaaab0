"""The persistence boundary on a real mongod: claims, leases, recovery and refusals."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from execution_engine.reasons import Reason
from execution_engine.states import JobState
from execution_engine.store import QUARANTINE_AFTER, JobStore, utcnow
from execution_engine.transitions import end_fields, transition


def new_jobs(store: JobStore, count: int, **extra: Any) -> list[Any]:
    docs = [{"state": "to be built", "command": ["true"], **extra} for _ in range(count)]
    return list(store.jobs.insert_many(docs).inserted_ids)


def test_two_claimers_never_take_the_same_job(store: JobStore) -> None:
    new_jobs(store, 200)
    taken: list[list[Any]] = [[], []]

    def claim(slot: int) -> None:
        while batch := store.claim(JobState.TO_BE_BUILT, JobState.BUILDING, owner=f"o{slot}",
                                   limit=7, lease_seconds=30):
            taken[slot].extend(d["_id"] for d in batch)

    threads = [threading.Thread(target=claim, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not set(taken[0]) & set(taken[1])
    assert len(taken[0]) + len(taken[1]) == 200
    assert store.jobs.count_documents({"state": "building", "engine_state": "building"}) == 200


def test_a_claim_skips_a_job_whose_state_a_client_rewrote(store: JobStore) -> None:
    (job,) = new_jobs(store, 1)
    store.jobs.update_one({"_id": job}, {"$set": {"engine_state": "finished"}})
    assert store.claim(JobState.TO_BE_BUILT, JobState.BUILDING, owner="o", limit=10,
                       lease_seconds=30) == []


def test_expired_leases_are_recovered_then_quarantined(store: JobStore) -> None:
    (job,) = new_jobs(store, 1)
    for round_ in range(QUARANTINE_AFTER):
        store.claim(JobState.TO_BE_BUILT, JobState.BUILDING, owner="dead/actor/1",
                    limit=1, lease_seconds=30)
        store.expire_leases_of("dead/")
        counts = store.recover_expired(by="test")
        state = store.get(job)
        assert state is not None
        if round_ < QUARANTINE_AFTER - 1:
            assert counts["building"] == 1 and state["state"] == "to be built"
        else:
            assert state["state"] == "error"
            assert state["reason"] == Reason.INTERNAL_ERROR.value
            assert "quarantined" in state["status_message"]


def test_renewed_leases_are_not_recovered(store: JobStore) -> None:
    new_jobs(store, 3)
    docs = store.claim(JobState.TO_BE_BUILT, JobState.BUILDING, owner="o", limit=3,
                       lease_seconds=0.01)
    store.renew_leases([d["_id"] for d in docs], docs[0]["lease"]["token"], 60)
    assert store.recover_expired(by="test")["building"] == 0


def test_a_rewritten_state_is_restored_and_recorded(store: JobStore) -> None:
    (job,) = new_jobs(store, 1)
    store.claim(JobState.TO_BE_BUILT, JobState.BUILDING, owner="o", limit=1, lease_seconds=30)
    store.apply([transition(job, JobState.BUILDING, JobState.ERROR, by="o",
                            fields=end_fields(False), message="failed")])
    store.jobs.update_one({"_id": job}, {"$set": {"state": "to be built"}})
    assert store.enforce_engine_states(by="test") == 1
    doc = store.get(job)
    assert doc is not None
    assert doc["state"] == doc["engine_state"] == "error"
    assert "refused a client write of state 'to be built'" in doc["history"][-1]["message"]
    assert doc["refused_writes"][-1]["state"] == "'to be built'"
    assert store.enforce_engine_states(by="test") == 0  # once


def test_only_a_new_job_may_be_inserted(store: JobStore) -> None:
    ids = [store.insert({"state": value, "command": ["true"]})
           for value in ("running", "finished", "submitting")]
    store.enforce_engine_states(by="test", job_ids=ids)
    for job in ids:
        doc = store.get(job)
        assert doc is not None and doc["state"] == "error", doc
        assert doc["reason"] == Reason.INVALID_DOCUMENT.value
        assert "must be inserted with state 'to be built'" in doc["status_message"]


def test_unclaimable_new_jobs_are_refused_naming_the_field(store: JobStore) -> None:
    bad_history = store.insert({"state": "to be built", "command": ["true"], "history": "x"})
    # So close to 16 MiB that the claim's own fields do not fit: refused by the claim.
    huge = store.insert({"state": "to be built", "command": ["true"],
                         "blob": "z" * (16 * 1024 * 1024 - 200)})
    good = store.insert({"state": "to be built", "command": ["true"]})
    def claim() -> list[Any]:
        return [d["_id"] for d in store.claim(JobState.TO_BE_BUILT, JobState.BUILDING,
                                              owner="o", limit=10, lease_seconds=30)]

    assert claim() == []  # the claim stopped at the huge job, and refused it
    assert claim() == [good]
    assert store.refuse_unworkable(by="test") == 1  # the history, which no claim takes
    doc = store.get(bad_history)
    assert doc is not None and doc["state"] == "error"
    assert "history" in doc["status_message"] and isinstance(doc["history"], list)
    big = store.get(huge)
    assert big is not None and big["state"] == "error" and "blob" in big["dropped_fields"]
    assert "max_document_bytes" in big["status_message"]


def test_a_write_the_server_refuses_ends_that_job_only(store: JobStore) -> None:
    first, second = new_jobs(store, 2)
    docs = store.claim(JobState.TO_BE_BUILT, JobState.BUILDING, owner="o", limit=2,
                       lease_seconds=30)
    store.jobs.update_one({"_id": first}, {"$set": {"history": "not a list"}})
    changes = [transition(d["_id"], JobState.BUILDING, JobState.TO_BE_SUBMITTED, by="o",
                          lease_token=d["lease"]["token"]) for d in docs]
    assert store.apply(changes) == 2
    one, two = store.get(first), store.get(second)
    assert one is not None and one["state"] == "error" and "history" in one["status_message"]
    assert two is not None and two["state"] == "to be submitted"


def test_a_cancel_of_a_job_in_doubt_is_left_to_the_submit_actor(store: JobStore) -> None:
    doubt, plain = new_jobs(store, 2, cancel_requested=True)
    for job in (doubt, plain):
        store.jobs.update_one({"_id": job}, {"$set": {"state": "to be submitted",
                                                      "engine_state": "to be submitted"}})
    store.jobs.update_one({"_id": doubt}, {"$set": {"submission.recover": True}})
    assert store.cancel_unsubmitted(by="test") == 1
    left, ended = store.get(doubt), store.get(plain)
    assert left is not None and left["state"] == "to be submitted"
    assert ended is not None and ended["state"] == "killed"
    assert ended["reason"] == Reason.CANCELLED.value


def test_forged_subjobs_do_not_count_for_a_master(store: JobStore) -> None:
    master = "m1"
    store.insert({"_id": master, "state": "submitted", "engine_state": "submitted",
                  "system": "split", "subjobs": {"total": 2}})
    store.insert_subjobs([{"_id": f"{master}.{i}", "parent": master, "index": i,
                           "state": "to be built"} for i in range(2)])
    store.insert({"_id": "forged", "parent": master, "index": 5, "state": "error",
                  "engine_state": "error"})
    counts = store.subjob_state_counts({master: [f"{master}.0", f"{master}.1"]})
    assert counts == {master: {"to be built": 2}}


def test_notifications_are_claimed_only_when_the_engine_made_them_due(store: JobStore
                                                                       ) -> None:
    sent, forged = new_jobs(store, 2)
    for job in (sent, forged):
        store.jobs.update_one({"_id": job}, {"$set": {
            "state": "finished", "engine_state": "finished",
            "notification": {"state": "sent"}, "engine_notification": "sent"}})
    store.jobs.update_one({"_id": forged}, {"$set": {"notification.state": "due"}})
    assert store.claim_notifications(owner="o", limit=10, lease_seconds=30) == []
    store.jobs.update_one({"_id": sent}, {"$set": {"notification.state": "due",
                                                   "engine_notification": "due"}})
    (claimed,) = store.claim_notifications(owner="o", limit=10, lease_seconds=30)
    assert claimed["_id"] == sent
    store.jobs.update_one({"_id": sent}, {"$set": {"lease.until": utcnow() - timedelta(1)}})
    assert store.recover_expired(by="test")["notification"] == 1


def test_unknown_and_array_states_are_ended_without_reading_the_ended_jobs(
        store: JobStore) -> None:
    ended = [store.insert({"state": "finished", "engine_state": "finished", "reason": "completed",
                           "command": ["true"]}) for _ in range(300)]
    bogus = store.insert({"state": "bogus", "command": ["true"]})
    listed = store.insert({"state": ["to be built"], "command": ["true"]})
    missing = store.insert({"command": ["true"]})
    profiled = store.db.command("profile", 2)["was"]  # every operation, with what it read
    try:
        assert store.fail_unknown_states(by="test") == 3
    finally:
        store.db.command("profile", profiled)
    for job in (bogus, listed, missing):
        doc = store.get(job)
        assert doc is not None and doc["state"] == "error", doc
    assert store.get(ended[0])["state"] == "finished"  # type: ignore[index]
    reads = list(store.db["system.profile"].find({"op": "query", "ns": store.jobs.full_name}))
    assert reads, "the sweep's queries were not profiled"
    assert sum(r.get("docsExamined", 0) for r in reads) <= 3 + 2, reads
