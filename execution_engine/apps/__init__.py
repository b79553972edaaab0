"""Applications: definitions with typed inputs, forged job scripts, sandboxes and split jobs.

* :mod:`.definition`: an application folder (``app.ini``, phase templates, environment
  snippets) read and checked;
* :mod:`.registry`: stored, versioned definitions (collection ``apps``);
* :mod:`.inputs` and :mod:`.staging`: a job's typed inputs checked, its files staged;
* :mod:`.markup` and :mod:`.forge`: ``@@NAME@@`` substitution and the forged phases;
* :mod:`.builder`: what the Building actor does with a job that names an application;
* :mod:`.split` and :mod:`.masters`: split jobs, their subjobs, and masters following them;
* :mod:`.outputs`: outputs listed with checksums, and fetched safely.

The user documentation is ``docs/applications.md``.
"""

from execution_engine.apps.definition import AppDefinition, DefinitionError, InputSpec
from execution_engine.apps.registry import AppRegistry, StoredApp, UnknownApp

__all__ = [
    "AppDefinition",
    "AppRegistry",
    "DefinitionError",
    "InputSpec",
    "StoredApp",
    "UnknownApp",
]
