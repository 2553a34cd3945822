"""The public Python surface: what ``import continuum`` offers, and what the docs promise."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

import continuum

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


def test_all_is_the_public_surface() -> None:
    assert set(continuum.__all__) == PUBLIC
    assert len(continuum.__all__) == len(PUBLIC)  # no name twice
    for name in PUBLIC:
        namespace: dict[str, object] = {}
        exec(f"from continuum import {name}", namespace)
        assert namespace[name] is getattr(continuum, name)
    namespace = {}
    exec("from continuum import *", namespace)
    assert {k for k in namespace if k != "__builtins__"} == PUBLIC
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
