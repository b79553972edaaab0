"""Building application jobs (``app`` instead of ``command``): the Building actor's other branch.

For a plain application job: check the document, find the application version, check every
input (all problems in one message), route the job (its execution system picks the environment
snippet, so application jobs are routed here, at build time; the Submit actor keeps the route),
stage file inputs into the job directory and forge the job script.

A job with a ``splitter`` is a split master (see :mod:`.split`): it is checked and built once,
its subjobs are written, and it becomes ``submitted`` on the ``split`` pseudo-system, followed
by :mod:`.masters`. A job with a ``parent`` is a subjob: built like a plain job in its own
directory under its master's, with its master's application version.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from execution_engine.apps.forge import ForgeError, forge_body
from execution_engine.apps.inputs import CheckedInputs, FileValue, as_text, check_inputs
from execution_engine.apps.registry import AppRegistry, StoredApp, UnknownApp
from execution_engine.apps.split import (
    RESERVED_TARGETS,
    SPLIT_SYSTEM,
    SplitError,
    Splitter,
    check_subjob_ids,
    files_of,
    split_values,
    subjob_documents,
    subjob_id,
    write_chunks,
)
from execution_engine.apps.staging import StagingError, stage
from execution_engine.errors import BuildError, InvalidJob
from execution_engine.identity.claims import sign_for_client
from execution_engine.job import Job
from execution_engine.jobdoc import job_id_text, job_name, job_project
from execution_engine.jobscript import make_job_dir
from execution_engine.states import JobState
from execution_engine.store import utcnow

if TYPE_CHECKING:
    from execution_engine.builder import Built, JobBuilder


class AppBuilder:
    """Builds application jobs for the :class:`JobBuilder` of one Building actor."""

    def __init__(self, builder: JobBuilder) -> None:
        self.builder = builder
        self.config = builder.config
        self.store = builder.store
        self.registry = AppRegistry(builder.store.db)
        self._versions: dict[tuple[str, int], StoredApp] = {}

    # ------------------------------------------------------------------ entry point
    def build(self, doc: Mapping[str, Any]) -> Built:
        """Build ``doc``, already checked against the job contract; raises InvalidJob,
        BuildError or RoutingError (the job ends in ``error`` with the message)."""
        app = self.app_of(doc)
        job = Job(doc)
        if job.parent is not None:
            return self.build_subjob(doc, app)
        if doc.get("splitter") is not None:
            return self.build_master(doc, app)
        return self.build_single(doc, app, job.job_dir(self.config.engine.jobs_dir))

    def app_of(self, doc: Mapping[str, Any]) -> StoredApp:
        name, version = doc["app"]["name"], doc["app"].get("version")
        if version is not None and (name, version) in self._versions:
            return self._versions[(name, version)]
        try:
            app = self.registry.get(name, version)
        except UnknownApp as exc:
            raise InvalidJob(doc["_id"], f"app: {exc}") from exc
        self._versions[(name, app.version)] = app
        return app

    # ------------------------------------------------------------------ one job
    def build_single(self, doc: Mapping[str, Any], app: StoredApp, job_dir: Path, *,
                     master_dir: Path | None = None, index: int | None = None) -> Built:
        from execution_engine.builder import Built

        job_id = doc["_id"]
        checked = check_inputs(app.definition, doc.get("inputs") or [],
                               allowed_dirs=self.config.engine.input_dirs)
        _refuse(job_id, app, checked.problems)
        # Routed while built: the execution system picks the environment snippet.
        route, system = self.builder.router.route({**doc, "job_dir": str(job_dir)})
        markups = self.markups(doc, app, checked, job_dir, system=system,
                               master_dir=master_dir, index=index)
        try:
            body = forge_body(app.definition, markups, system)
        except ForgeError as exc:
            raise BuildError(job_id, f"application {app.name} version {app.version}: "
                             + "; ".join(exc.problems)) from exc
        self.builder.write(Job(doc), job_dir, body=body,
                           stage=lambda target: self.stage_all(job_id, checked, target))
        return Built(job_dir, JobState.TO_BE_SUBMITTED, {
            "app.version": app.version,
            "output_patterns": list(app.definition.outputs),
            "route": route,
            "system": system,
        })

    def stage_all(self, job_id: Any, checked: CheckedInputs, job_dir: Path) -> None:
        for name, value in checked.values.items():
            if isinstance(value, FileValue):
                try:
                    stage(value.source, job_dir, value.target, value.action,
                          self.builder.account_in_build)
                except (StagingError, OSError) as exc:
                    raise BuildError(job_id, f"input {name!r}: cannot stage {value.source} as "
                                     f"{value.target!r}: {exc}") from exc

    def markups(self, doc: Mapping[str, Any], app: StoredApp, checked: CheckedInputs,
                job_dir: Path, *, system: str, master_dir: Path | None, index: int | None
                ) -> dict[str, str]:
        """The value of every markup: the inputs', then the engine's."""
        values = {name: str(job_dir / value.target) if isinstance(value, FileValue)
                  else as_text(value) for name, value in checked.values.items()}
        cores = (doc.get("requirements") or {}).get("cores") or 1
        engine = {
            "JOB_ID": job_id_text(doc["_id"]),
            "JOB_NAME": job_name(doc),
            "JOB_DIR": str(job_dir),
            "PROJECT": job_project(doc),
            "OWNER": doc.get("owner") or "",
            "APP_NAME": app.name,
            "APP_VERSION": str(app.version),
            "SYSTEM": system,
            "CORES": str(cores),
            "SUBJOB_INDEX": "" if index is None else str(index),
            "MASTER_DIR": str(master_dir or job_dir),
        }
        return {**values, **engine}

    # ------------------------------------------------------------------ split jobs
    def build_master(self, doc: Mapping[str, Any], app: StoredApp) -> Built:
        from execution_engine.builder import Built

        job_id = doc["_id"]
        splitter = Splitter.from_doc(doc["splitter"])
        checked = check_inputs(app.definition, doc.get("inputs") or [],
                               split_input=splitter.input, split_directory=splitter.by_files,
                               reserved_targets=RESERVED_TARGETS,
                               allowed_dirs=self.config.engine.input_dirs)
        values, split_problems = split_values(app.definition, splitter)
        problems = [*checked.problems, *split_problems]
        if values and (reason := check_subjob_ids(job_id, len(values))) is not None:
            problems.append(reason)
        _refuse(job_id, app, problems)
        master_dir = Job(doc).job_dir(self.config.engine.jobs_dir)
        try:
            make_job_dir(master_dir, self.config.engine.jobs_dir, **self.builder.ownership())
            self.stage_all(job_id, checked, master_dir)
            per_subjob: list[Any] = values
            source = checked.split_source
            if splitter.kind == "files" and source is not None:
                per_subjob = files_of(source.source, source)
            elif splitter.kind == "lines" and source is not None:
                per_subjob = write_chunks(source, int(splitter.argument), master_dir)
            if not per_subjob:
                raise BuildError(job_id, f"splitter: input {splitter.input!r} gives no "
                                 "subjobs (an empty directory or file?)")
            reason = check_subjob_ids(job_id, len(per_subjob))
            if reason is not None:
                raise InvalidJob(job_id, f"invalid job: {reason}")
            shared = {k: v for k, v in checked.values.items() if k != splitter.input}
            subjobs = subjob_documents(doc, app.version, shared, split_input=splitter.input,
                                       per_subjob=per_subjob, master_dir=master_dir)
            for subjob in subjobs:  # the master's claim was checked: its subjobs are signed
                subjob.update(sign_for_client(self.config.identity, doc.get("client"), subjob))
            taken = self.store.insert_subjobs(subjobs)
            if taken:
                raise SplitError([f"could not write {len(taken)} subjobs (ids taken by other "
                                  "jobs?): " + ", ".join(str(i) for i in taken[:5])])
        except SplitError as exc:
            raise BuildError(job_id, "; ".join(exc.problems)) from exc
        except OSError as exc:
            raise BuildError(job_id, f"cannot write the job directory {master_dir}: {exc}"
                             ) from exc
        count = len(subjobs)
        return Built(master_dir, JobState.SUBMITTED, {
            "app.version": app.version,
            "output_patterns": list(app.definition.outputs),
            "system": SPLIT_SYSTEM,
            "submitted_at": utcnow(),
            "subjobs": {"total": count, "counts": {JobState.TO_BE_BUILT.value: count}},
        }, f"split into {count} subjobs by input {splitter.input!r} ({splitter.kind})")

    def build_subjob(self, doc: Mapping[str, Any], app: StoredApp) -> Built:
        """A subjob is built only as the subjob its master wrote: a document that merely names
        a master as its ``parent`` is refused."""
        job = Job(doc)
        master = self.store.split_master(job.parent)
        index = job.index
        if master is None or not master.get("splitter") or \
                (master.get("app") or {}).get("name") != app.name:
            raise InvalidJob(job.id, f"parent: {job.parent} is not a split job of "
                                     f"application {app.name}")
        if index is None or index < 0:
            raise InvalidJob(job.id, f"index: {doc.get('index')!r} is not a subjob index")
        if job.id != subjob_id(job.parent, index):
            raise InvalidJob(job.id, f"_id: a subjob of {job.parent} is written by the engine "
                                     f"(as {subjob_id(job.parent, index)!r}), not by a client")
        master_dir = Job(master).job_dir(self.config.engine.jobs_dir)
        return self.build_single(doc, app, job.job_dir(self.config.engine.jobs_dir),
                                 master_dir=master_dir, index=index)


def _refuse(job_id: Any, app: StoredApp, problems: list[str]) -> None:
    if problems:
        raise InvalidJob(job_id, f"invalid inputs for application {app.name} version "
                                 f"{app.version}: " + "; ".join(problems))
