"""CVAT for images 1.1 XML, parsed back with ElementTree."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace

from formats.test_formats_rows import make_row

from labeler.formats.cvat import write_cvat

NASTY = "a <b> & \"c\" 'd'\nnext line\x01"


def test_structure_and_escaping(tmp_path):
    rows = [
        make_row(1, text=NASTY, path='dir & <x>/"q".png'),
        replace(make_row(2), width=None, height=None),
    ]
    dest = tmp_path / "annotations.xml"
    assert write_cvat(iter(rows), dest, task_name="drafts <&>").count == 2
    root = ET.parse(dest).getroot()
    assert root.tag == "annotations" and root.find("version").text == "1.1"
    task = root.find("meta/task")
    assert task.find("name").text == "drafts <&>" and task.find("mode").text == "annotation"
    label = task.find("labels/label")
    assert label.find("name").text == "caption" and label.find("type").text == "tag"
    attributes = {
        a.find("name").text: a.find("input_type").text
        for a in label.findall("attributes/attribute")
    }
    assert attributes == {"text": "text", "p_accept": "text", "confidence": "text"}

    images = root.findall("image")
    assert [i.get("id") for i in images] == ["0", "1"]
    assert images[0].get("name") == 'dir & <x>/"q".png'
    assert (images[0].get("width"), images[0].get("height")) == ("4", "3")
    assert images[1].get("width") is None
    tag = images[0].find("tag")
    assert (tag.get("label"), tag.get("source")) == ("caption", "auto")
    values = {a.get("name"): a.text for a in tag.findall("attribute")}
    assert values["text"] == NASTY.replace("\x01", "\ufffd")  # XML 1.0 cannot hold \x01
    assert float(values["confidence"]) == round(rows[0].confidence, 6)
    assert float(values["p_accept"]) == round(rows[0].p_accept, 6)


def test_attribute_newlines_survive(tmp_path):
    write_cvat([make_row(1, path="a\nb.png")], tmp_path / "a.xml")
    assert ET.parse(tmp_path / "a.xml").getroot().find("image").get("name") == "a\nb.png"
