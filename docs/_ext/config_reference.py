"""``.. config-table:: SECTION``: the reference table of one config section, made from the schema.

Each row is a key of :data:`mgrit_resnet.config.SCHEMA`: its type and allowed
values (attributes of the key's check), its default (written as TOML) and its
meaning (:data:`mgrit_resnet.config.DESCRIPTIONS`). The reference is generated,
so it cannot drift from the code; a key without a description fails the build.
"""

from __future__ import annotations

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective

from mgrit_resnet.config import DESCRIPTIONS, SCHEMA, toml_value


def allowed_text(check) -> str:
    """The allowed values of a key's check, as reStructuredText."""
    if check.choices:
        return ", ".join(f"``{toml_value(choice)}``" for choice in check.choices)
    return check.allowed.replace("*", r"\*")


def table_rst(section: str) -> str:
    """The list-table of one SCHEMA section (raises ExtensionError for a key without a description)."""
    if section not in SCHEMA:
        raise ExtensionError(f"config-table: unknown section {section!r}; sections: {', '.join(SCHEMA)}")
    missing = [key for key in SCHEMA[section] if not DESCRIPTIONS.get(section, {}).get(key)]
    if missing:
        raise ExtensionError(
            f"config-table: no description in mgrit_resnet.config.DESCRIPTIONS for {', '.join(f'{section}.{k}' for k in missing)}"
        )
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 14 16 22 12 36", "   :class: config-table", ""]
    lines += ["   * - key", "     - type", "     - allowed values", "     - default", "     - meaning"]
    for key, (default, check) in SCHEMA[section].items():
        lines += [
            f"   * - ``{key}``",
            f"     - {check.kind}",
            f"     - {allowed_text(check)}",
            f"     - ``{toml_value(default)}``",
            f"     - {DESCRIPTIONS[section][key]}",
        ]
    return "\n".join(lines) + "\n"


class ConfigTable(SphinxDirective):
    required_arguments = 1

    def run(self):
        return self.parse_text_to_nodes(table_rst(self.arguments[0]))


def setup(app: Sphinx) -> dict:
    app.add_directive("config-table", ConfigTable)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
