"""The documentation: the config reference matches the schema, and Sphinx builds it with ``-W``."""

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT

from mgrit_resnet.config import SCHEMA

DOCS = ROOT / "docs"
SECTION_HEADING = re.compile(r"^``\[(\w+)\]``\n-+\n", re.MULTILINE)
# A list-table row: "* - ``key``" followed by the default cell "- ``value``".
ROW = re.compile(r"^\s*\* - ``(\w+)``\n\s*- ``(.+?)``\s*$", re.MULTILINE)


def documented_sections() -> dict[str, dict[str, str]]:
    """``{section: {key: default cell}}`` from the tables of docs/config.rst, in file order."""
    text = (DOCS / "config.rst").read_text()
    headings = list(SECTION_HEADING.finditer(text))
    sections = {}
    for heading, following in zip(headings, headings[1:] + [None]):
        body = text[heading.end() : following.start() if following else len(text)]
        sections[heading.group(1)] = {key: default for key, default in ROW.findall(body)}
    return sections


def test_every_schema_key_appears_in_config_rst():
    text = (DOCS / "config.rst").read_text()
    missing = [f"{section}.{key}" for section, keys in SCHEMA.items() for key in keys if f"``{key}``" not in text]
    assert not missing, f"docs/config.rst does not mention: {', '.join(missing)}"


def test_config_tables_list_exactly_the_schema_keys():
    sections = documented_sections()
    assert list(sections) == list(SCHEMA), "one ``[section]`` table per SCHEMA section, in SCHEMA order"
    for name, keys in SCHEMA.items():
        assert list(sections[name]) == list(keys), f"[{name}]: documented keys differ from SCHEMA"


def test_config_tables_give_the_schema_defaults():
    for name, table in documented_sections().items():
        for key, cell in table.items():
            if key not in SCHEMA.get(name, {}):
                continue  # reported by test_config_tables_list_exactly_the_schema_keys
            default = SCHEMA[name][key][0]
            documented = tomllib.loads(f"value = {cell}")["value"]
            assert type(documented) is type(default) and documented == default, (
                f"{name}.{key}: docs/config.rst says {cell}, SCHEMA default is {default!r}"
            )


def test_docs_build_without_warnings(tmp_path):
    if importlib.util.find_spec("sphinx") is None:
        pytest.fail("sphinx is not installed: run `make setup` (it installs the `docs` extra)")
    sphinx_build = Path(sys.executable).parent / "sphinx-build"
    if not sphinx_build.exists():
        pytest.fail(f"sphinx-build not found next to {sys.executable}: run `make setup` (it installs the `docs` extra)")
    proc = subprocess.run(
        [str(sphinx_build), "-W", "-q", "-b", "html", str(DOCS), str(tmp_path / "html")],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"sphinx-build -W failed ({proc.returncode}):\n{proc.stderr}\n{proc.stdout}"
