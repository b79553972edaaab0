"""Opening a file as an account would (:func:`execution_engine.identity.accounts.open_as`): the
mode bits of every folder on the way and of the file decide, and no link met after the path was
resolved is followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from execution_engine.identity import Account
from execution_engine.identity.accounts import READ, SEARCH, open_as, permits
from tests.support.accounts import LocalAccounts


def fake_stat(uid: int, gid: int, mode: int) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


ALICE = Account("alice", 2001, 2001, (2001, 3000), "/home/alice", "/bin/sh")


@pytest.mark.parametrize(("uid", "gid", "mode", "wanted", "allowed"), [
    (2001, 0, 0o400, READ, True),      # the owner's bits
    (2001, 0, 0o044, READ, False),     # the owner's bits only, even when others may
    (0, 3000, 0o040, READ, True),      # a supplementary group's bits
    (0, 2001, 0o010, SEARCH, True),    # the primary group's
    (0, 5, 0o004, READ, True),         # the others' bits
    (0, 5, 0o770, SEARCH, False),
])
def test_permits_follows_the_kernels_order_of_owner_group_others(
        uid: int, gid: int, mode: int, wanted: int, allowed: bool) -> None:
    assert permits(ALICE, fake_stat(uid, gid, mode), wanted) is allowed


def test_open_as_refuses_what_the_account_cannot_reach_and_links_on_the_way(
        local_accounts: LocalAccounts, open_jobs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = local_accounts.account("reader")
    tmp_path = open_jobs_dir.parent  # every account may search the folders above it
    readable = tmp_path / "readable.txt"
    readable.write_text("yes")
    fd = open_as(account, readable)
    try:
        assert os.read(fd, 10) == b"yes"
    finally:
        os.close(fd)
    readable.chmod(0o600)
    with pytest.raises(PermissionError, match=f"may not read {readable}"):
        open_as(account, readable)
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    (closed / "file").write_text("no")
    (closed / "file").chmod(0o644)
    with pytest.raises(PermissionError, match=f"may not enter {closed}"):
        open_as(account, closed / "file")
    # A folder swapped for a link after the path was resolved: the walk does not follow it.
    (tmp_path / "swapped").symlink_to(closed)
    monkeypatch.setattr(Path, "resolve", lambda self, strict=False: self)
    with pytest.raises(OSError):
        open_as(account, tmp_path / "swapped" / "file")
    os.mkfifo(tmp_path / "fifo", 0o666)
    with pytest.raises(PermissionError, match="not a regular file"):
        open_as(account, tmp_path / "fifo")
