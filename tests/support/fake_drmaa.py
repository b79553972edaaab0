"""A stand-in for the ``drmaa`` Python binding, over :class:`FakeScheduler`: jobs run as local
processes, no DRMAA library or cluster is loaded.

Put it in ``sys.modules["drmaa"]`` and point ``STATE_DIR`` (or ``$EXECD_FAKE_DRM_DIR``) at a
scheduler's folder; the DRMAA systems then run their own code against it. What it implements is
what :mod:`execution_engine.systems.drmaa_base` uses: ``Session`` (``initialize``, ``exit``,
``createJobTemplate``, ``deleteJobTemplate``, ``runJob``, ``jobStatus``, ``control``, ``wait``),
``JobControlAction`` and the exceptions of ``drmaa.errors``. Job states follow DRMAA: a job the
scheduler never had raises ``InvalidJobException``; a native specification with ``-h`` submits
the job held.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.support.fake_scheduler import (
    CANCELLED,
    COMPLETED,
    FAILED,
    PENDING,
    RUNNING,
    SUSPENDED,
    FakeScheduler,
)

#: The scheduler's folder; ``$EXECD_FAKE_DRM_DIR`` when None.
STATE_DIR: Path | None = None


class DrmaaException(Exception):
    pass


class DeniedByDrmException(DrmaaException):
    pass


class InvalidAttributeValueException(DrmaaException):
    pass


class InvalidAttributeFormatException(DrmaaException):
    pass


class ConflictingAttributeValuesException(DrmaaException):
    pass


class InvalidArgumentException(DrmaaException):
    pass


class UnsupportedAttributeException(DrmaaException):
    pass


class InvalidJobException(DrmaaException):
    pass


class DrmCommunicationException(DrmaaException):
    pass


class ExitTimeoutException(DrmaaException):
    pass


class InvalidStateException(DrmaaException):
    pass


errors = SimpleNamespace(**{name: value for name, value in globals().items()
                            if isinstance(value, type) and issubclass(value, DrmaaException)})


class JobControlAction:
    SUSPEND = "suspend"
    RESUME = "resume"
    HOLD = "hold"
    RELEASE = "release"
    TERMINATE = "terminate"


class JobTemplate:
    def __init__(self) -> None:
        self.remoteCommand = ""
        self.args: list[str] = []
        self.workingDirectory = ""
        self.jobName = ""
        self.outputPath = ""
        self.errorPath = ""
        self.joinFiles = False
        self.nativeSpecification = ""


def _scheduler() -> FakeScheduler:
    folder = STATE_DIR or os.environ.get("EXECD_FAKE_DRM_DIR")
    if not folder:
        raise DrmCommunicationException("code 2: no fake DRM folder configured")
    return FakeScheduler(Path(folder))


class Session:
    JOB_IDS_SESSION_ANY = "DRMAA_JOB_IDS_SESSION_ANY"
    TIMEOUT_NO_WAIT = 0

    contact = "fake"
    drmaaImplementation = "fake DRMAA over local processes"

    def __init__(self) -> None:
        self.active = False

    def initialize(self) -> None:
        _scheduler()
        self.active = True

    def exit(self) -> None:
        self.active = False

    def createJobTemplate(self) -> JobTemplate:
        return JobTemplate()

    def deleteJobTemplate(self, template: JobTemplate) -> None:
        pass

    def runJob(self, template: JobTemplate) -> str:
        if template.remoteCommand != "/bin/sh" or len(template.args) != 1:
            raise InvalidArgumentException("code 4: only /bin/sh <script> is run here")
        words = template.nativeSpecification.split()
        if "-q" in words and words[words.index("-q") + 1] != "all.q":
            raise DeniedByDrmException(f"code 17: Job was rejected because job requests "
                                       f"unknown queue \"{words[words.index('-q') + 1]}\"")
        return _scheduler().submit(name=template.jobName, script=template.args[0],
                                   workdir=template.workingDirectory,
                                   output=template.outputPath.lstrip(":"), hold="-h" in words)

    def jobStatus(self, job_id: str) -> str:
        job = _scheduler().load(str(job_id))
        if job is None:
            raise InvalidJobException(f"code 18: the job specified by the 'jobid' does not "
                                      f"exist: {job_id}")
        if job["shown"]:
            return str(job["shown"])
        state = job["state"]
        if state == PENDING:
            return "user_on_hold" if job["held"] else "queued_active"
        return {RUNNING: "running", SUSPENDED: "user_suspended", COMPLETED: "done",
                FAILED: "failed", CANCELLED: "failed"}[state]

    def control(self, job_id: str, action: str) -> None:
        scheduler = _scheduler()
        if scheduler.load(str(job_id)) is None:
            raise InvalidJobException(f"code 18: no job {job_id}")
        if action == JobControlAction.TERMINATE:
            scheduler.cancel(str(job_id))
            return
        if action in (JobControlAction.HOLD, JobControlAction.RELEASE):
            problem = scheduler.hold(str(job_id), action == JobControlAction.HOLD)
        else:
            problem = scheduler.suspend(str(job_id), action == JobControlAction.SUSPEND)
        if problem:
            raise InvalidStateException(f"code 13: {problem}")

    def wait(self, job_id: str, timeout: Any = None) -> None:
        raise ExitTimeoutException("code 19: no job has ended since the last wait")
