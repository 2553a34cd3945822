"""The public Python surface: what ``import continuum`` and ``continuum.testing`` offer, the
``continuum.mock`` entry points, and what the docs promise."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import msgspec
import pytest

import continuum
import continuum.mock
import continuum.testing

ROOT = Path(__file__).resolve().parent.parent

#: Adding a name here is a promise to users; removing one breaks them.
PUBLIC = {
    "BackendConfig",
    "Config",
    "ConfigError",
    "RouterError",
    "RouterHandle",
    "__version__",
    "config_from_dict",
    "dump_effective_config",
    "generate_config",
    "load_config",
    "parse_config",
    "serve",
}


#: The test doubles, public like ``trio.testing``.
TESTING = {
    "MockRealtime",
    "MockUpstream",
    "RealtimeScript",
    "ResponseStore",
    "open_mock_server",
    "serve_mock",
    "serve_mock_realtime",
}

#: ``continuum.mock``: the mock's entry points under the name they were first published as.
MOCK = {
    "MockUpstream",
    "ResponseStore",
    "add_mock_arguments",
    "main",
    "mock_config_from_args",
    "parse_mock_failure",
    "run_mock_from_args",
    "serve_mock",
}


@pytest.mark.parametrize(
    ("module", "public"),
    [("continuum", PUBLIC), ("continuum.testing", TESTING), ("continuum.mock", MOCK)],
)
def test_all_is_the_surface(module: str, public: set[str]) -> None:
    face = importlib.import_module(module)
    names = face.__all__
    assert set(names) == public
    assert len(names) == len(public)  # no name twice
    for name in public:
        namespace: dict[str, object] = {}
        exec(f"from {module} import {name}", namespace)
        assert namespace[name] is getattr(face, name)
    namespace = {}
    exec(f"from {module} import *", namespace)
    assert {k for k in namespace if k != "__builtins__"} == public


def test_the_mock_alias_hands_on_the_same_objects() -> None:
    assert continuum.mock.MockUpstream is continuum.testing.MockUpstream
    assert continuum.mock.serve_mock is continuum.testing.serve_mock
    assert continuum.mock.ResponseStore is continuum.testing.ResponseStore


def test_the_public_objects_are_what_they_say() -> None:
    assert isinstance(continuum.__version__, str) and continuum.__version__
    assert issubclass(continuum.ConfigError, Exception)
    assert issubclass(continuum.RouterError, Exception)
    assert callable(continuum.serve)


def _documented_names() -> set[str]:
    """``continuum.<name>(`` (or ``,`` as in ``nursery.start(continuum.serve, config)``) in
    the README and docs, and the functions docs/configuration.md lists before its keys."""
    names: set[str] = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        names.update(re.findall(r"\bcontinuum\.([A-Za-z]\w*)[(,]", text))
    config_doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    intro = config_doc.split("## Value syntax", 1)[0]
    names.update(re.findall(r"`([a-z_]\w*)\(", intro))
    return names


def test_every_documented_function_is_exported() -> None:
    documented = _documented_names()
    assert {"generate_config", "dump_effective_config", "load_config", "serve"} <= documented
    missing = {name for name in documented if name not in continuum.__all__}
    assert not missing, f"documented as continuum.<name> but not exported: {sorted(missing)}"


def test_exported_config_helpers_work() -> None:
    text = continuum.generate_config()
    config = continuum.parse_config(text, source="<generated>")
    dumped = continuum.dump_effective_config(config)
    assert dumped.startswith("# effective configuration (from <generated>)")
    reloaded = continuum.parse_config(dumped, source="<dumped>")
    assert reloaded == msgspec.structs.replace(config, source="<dumped>")
