"""CVAT for images 1.1 XML: one `caption` tag per image, its text in a text attribute.

The layout follows CVAT's own dumper (cvat/apps/dataset_manager/formats/cvat.py) and the XML
format page: <annotations><version>1.1</version><meta><task>...<labels>, then one <image> per
draft. The label `caption` is a tag label with three text attributes, `text` (the draft),
`p_accept` and `confidence`, so the reviewer sees how likely the draft is to be right and how
sure the model was. Tags are `source="auto"`: they are
pre-annotations, not a person's work.

CVAT matches an <image> to a task frame by its name (the path relative to the dataset root,
which is how a task created from the same folder names its frames); `id` is just the position
in this file. The task's <size> is left out: it is only known after the last streamed row, and
CVAT's importer does not need it.

Every string is escaped for XML text or attributes (newlines in attributes as &#10; so a
parser does not fold them), and the characters XML 1.0 cannot hold at all are replaced.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from labeler.atomic import atomic_output
from labeler.records import ExportResult, ExportRow

LABEL = "caption"
ATTRIBUTES = ("text", "p_accept", "confidence")
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_ATTR_ENTITIES = {"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}


def _text(value: str) -> str:
    return escape(_NOT_XML.sub("\ufffd", value))


def _attr(value: str) -> str:
    return quoteattr(_NOT_XML.sub("\ufffd", value), _ATTR_ENTITIES)


def meta(task_name: str) -> str:
    """The <meta> block: the task and its one label with its text attributes."""
    attributes = "".join(
        "\n          <attribute>"
        f"\n            <name>{name}</name>"
        "\n            <mutable>False</mutable>"
        "\n            <input_type>text</input_type>"
        "\n            <default_value></default_value>"
        "\n            <values></values>"
        "\n          </attribute>"
        for name in ATTRIBUTES
    )
    dumped = datetime.now(timezone.utc).isoformat()
    return (
        "  <meta>\n    <task>\n"
        f"      <name>{_text(task_name)}</name>\n"
        "      <mode>annotation</mode>\n      <overlap>0</overlap>\n"
        "      <flipped>False</flipped>\n"
        f"      <labels>\n        <label>\n          <name>{LABEL}</name>\n"
        f"          <type>tag</type>\n          <attributes>{attributes}\n"
        "          </attributes>\n        </label>\n      </labels>\n"
        f"    </task>\n    <dumped>{dumped}</dumped>\n  </meta>\n"
    )


def image_element(row: ExportRow, index: int) -> str:
    """One <image> with its caption tag."""
    size = ""
    if row.width is not None and row.height is not None:
        size = f' width="{row.width}" height="{row.height}"'
    return (
        f'  <image id="{index}" name={_attr(row.path)}{size}>\n'
        f'    <tag label="{LABEL}" source="auto">\n'
        f'      <attribute name="text">{_text(row.text)}</attribute>\n'
        f'      <attribute name="p_accept">{row.p_accept:.6f}</attribute>\n'
        f'      <attribute name="confidence">{row.confidence:.6f}</attribute>\n'
        "    </tag>\n  </image>\n"
    )


def write_cvat(
    rows: Iterable[ExportRow],
    dest: Path,
    *,
    force: bool = False,
    task_name: str = "labeler drafts",
) -> ExportResult:
    """Write a CVAT for images 1.1 annotations file."""
    count = 0
    with atomic_output(dest, force=force) as out:
        out.write('<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n')
        out.write("  <version>1.1</version>\n")
        out.write(meta(task_name))
        for row in rows:
            out.write(image_element(row, count))
            count += 1
        out.write("</annotations>\n")
    return ExportResult(count=count, paths=[dest])
