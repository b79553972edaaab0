"""Configuration: defaults, validation errors naming file/section/key, and the documented example
covering every key of the configspec."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from configobj import ConfigObj

from execution_engine.config import load_config, parse_config
from execution_engine.errors import ConfigError
from execution_engine.plugins import load_registry

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_embedded_mongodb_and_one_local_system() -> None:
    config = parse_config("")
    assert config.mongodb.embedded
    assert [s.cls for s in config.systems] == ["local"]
    assert [(r.name, r.system, r.rules) for r in config.routes] == [("default", "local", ())]


def test_errors_name_file_section_key_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "execd.ini"
    path.write_text("[monitor]\npoll_interval = fast\n[actors]\nsubmit = 0\n[nonsense]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert text.startswith(str(path))
    assert '[monitor] poll_interval: the value "fast" is of the wrong type' in text
    assert '[actors] submit: the value "0" is too small' in text
    assert "[nonsense]: unknown key or section" in text


def test_route_to_an_unknown_system_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[routes\]\[r\] system: 'nowhere' is not a section"):
        parse_config("[routes]\n[[r]]\nsystem = nowhere\n")


def test_system_options_are_checked_by_the_class() -> None:
    config = parse_config("[systems]\n[[local]]\nclass = local\nslots = none\ncolour = red\n")
    with pytest.raises(ConfigError) as info:
        load_registry(config)
    text = str(info.value)
    assert "[systems][local] slots" in text
    assert "[systems][local] colour: unknown option" in text


def test_unknown_system_class_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown execution system class 'quantum'"):
        load_registry(parse_config("[systems]\n[[q]]\nclass = quantum\n"))


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.ini")


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "execd.ini"
    path.write_text("[engine]\nstate_dir = st\n")
    config = load_config(path)
    assert config.engine.state_dir == tmp_path / "st"
    assert config.engine.jobs_dir == tmp_path / "st" / "jobs"


def test_shipped_example_config_is_valid_and_documents_every_key() -> None:
    example = ROOT / "conf" / "execd.ini"
    config = load_config(example)
    load_registry(config)
    spec = ConfigObj(resources.files("execution_engine").joinpath("configspec.ini")
                     .read_text().splitlines(), list_values=False, _inspec=True)
    text = example.read_text()
    for section in ("engine", "mongodb", "monitor", "actors", "notification", "plugins"):
        for key in spec[section]:
            assert f"{key} =" in text or f"# {key} =" in text, f"[{section}] {key} undocumented"
    # The keys every system class shares, capabilities included.
    for key in spec["systems"]["__many__"]:
        if key != "class":
            assert f"{key} " in text, f"[systems] common key {key} undocumented"
