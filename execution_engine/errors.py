"""One exception hierarchy for the engine.

Permanent errors end the job (or refuse the configuration); transient errors leave the job where
it is and the engine tries again later with backoff. Every error names what it is about: the job,
the execution system, the plugin or the configuration key.
"""

from __future__ import annotations


class ExecdError(Exception):
    """Base class of every error the engine raises on purpose."""


class ConfigError(ExecdError):
    """The configuration is unusable. The message names the file, section, key and reason."""

    def __init__(self, problems: list[str] | str, path: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(self.problems))


class PluginError(ExecdError):
    """A plugin (routing rule or execution system) failed to load, register or run."""

    def __init__(self, plugin: str, reason: str) -> None:
        self.plugin = plugin
        self.reason = reason
        super().__init__(f"plugin {plugin}: {reason}")


class JobError(ExecdError):
    """Something about one job; ``job_id`` says which."""

    def __init__(self, job_id: object, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"job {job_id}: {reason}")


class InvalidJob(JobError):
    """The job document breaks the job contract; the job ends in ``error`` with this reason."""


class BuildError(JobError):
    """The job could not be built (job directory, inputs, script); permanent."""


class NoAccount(JobError):
    """The job's owner maps to no local account it may run as; permanent for this job."""


class RoutingError(JobError):
    """No route accepts the job, or a rule failed; permanent for this job."""


class ExecutionSystemError(ExecdError):
    """An execution system failed. ``system`` names it."""

    def __init__(self, system: str, reason: str) -> None:
        self.system = system
        self.reason = reason
        super().__init__(f"execution system {system}: {reason}")


class SubmissionRejected(ExecutionSystemError):
    """The execution system refused the job for good (bad queue, impossible request)."""


class SystemUnavailable(ExecutionSystemError):
    """The execution system cannot answer now (scheduler down, command timed out). Transient:
    jobs keep their state and the engine retries with backoff."""


class NoCapacity(SystemUnavailable):
    """The execution system has no free slot now; the job waits and is offered again."""


class AppError(ExecdError):
    """An application job cannot be prepared or collected: a markup the engine cannot fill
    (``ForgeError``), a splitter that gives no usable subjobs (``SplitError``), an input that
    cannot be staged (``StagingError``), outputs that cannot be fetched (``FetchError``). The
    message names the file, field or line and why; the caller ends the job with it."""


class StoreUnavailable(ExecdError):
    """MongoDB cannot be reached; transient."""


class NotRunning(ExecdError):
    """The daemon is not running (for client commands that need it)."""
