"""The Python examples of the client documentation run against a real daemon, as written.

Every ```python block of docs/client.md runs, in order, in one interpreter whose
``$EXECD_CONFIG`` names the daemon's configuration. In docs/job-contract.md, the blocks marked
``<!-- tested -->`` on the line before their fence run the same way, with ``uri`` and
``database`` defined first (the database of the daemon, as those examples say). A block that
raises fails the test, naming the block; so the documentation and the engine cannot drift apart.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, Engine

DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
MARKED = re.compile(r"^<!-- tested -->\n```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page: Path, *, marked_only: bool = False) -> list[tuple[int, str]]:
    """``(line, code)`` of each Python example of ``page`` (only the marked ones if asked)."""
    text = page.read_text()
    pattern = MARKED if marked_only else FENCE
    return [(text[:m.start()].count("\n") + 1, m.group(1)) for m in pattern.finditer(text)]


def run_blocks(engine: Engine, page: Path, blocks: list[tuple[int, str]], tmp_path: Path,
               prelude: str = "") -> str:
    """Run ``blocks`` one after the other in one interpreter; its output. Each block is
    announced on stderr, so that a failure names the block's line in ``page``."""
    script = [prelude]
    for line, code in blocks:
        script.append(f"print('--- {page.name}:{line}', file=__import__('sys').stderr, "
                      "flush=True)\n")
        script.append(code)
    path = tmp_path / f"examples_{page.stem}.py"
    path.write_text("\n".join(script))
    env = {**os.environ, "EXECD_CONFIG": str(engine.config_path),
           "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path, env=env, check=False)
    if result.returncode != 0:
        failed = [ln for ln in result.stderr.splitlines() if ln.startswith("--- ")]
        raise AssertionError(f"example {failed[-1][4:] if failed else '?'} failed:\n"
                             f"{result.stderr[-3000:]}\n{engine.log_file.read_text()[-2000:]}")
    return result.stdout


def test_the_client_page_has_examples_of_every_method() -> None:
    code = "\n".join(block for _, block in python_blocks(DOCS / "client.md"))
    for call in ("Client(", ".submit(", ".wait(", ".status", ".outputs(", ".fetch(",
                 ".cancel(", ".hold(", ".release(", ".resubmit(", ".jobs(", ".watch("):
        assert call in code, f"docs/client.md shows no example of {call}"


def test_the_examples_of_the_client_page_run(engine: Engine, tmp_path: Path) -> None:
    blocks = python_blocks(DOCS / "client.md")
    assert len(blocks) >= 6
    out = run_blocks(engine, DOCS / "client.md", blocks, tmp_path)
    assert engine.database in out  # the first example prints the database it found
    # What the examples did is in the daemon's database.
    assert engine.store.counts().get("finished", 0) >= 6
    assert engine.store.counts().get("error", 0) >= 1  # run twice, ended twice
    assert engine.store.counts().get("killed", 0) == 1


def test_the_marked_examples_of_the_job_contract_run(engine: Engine, tmp_path: Path) -> None:
    blocks = python_blocks(DOCS / "job-contract.md", marked_only=True)
    if not blocks:
        pytest.fail("docs/job-contract.md has no example marked <!-- tested -->")
    prelude = textwrap.dedent(f"""\
        uri = {engine.mongo_uri!r}
        database = {engine.database!r}
        """)
    run_blocks(engine, DOCS / "job-contract.md", blocks, tmp_path, prelude)
