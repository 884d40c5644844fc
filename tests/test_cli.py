"""The command line: help everywhere, fast start-up, one-line errors, scan and datasets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import imagefactory as make
import pytest
from typer.testing import CliRunner

from labeler.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_every_command_has_help_text():
    import typer.main

    group = typer.main.get_command(app)
    assert group.commands, "no commands registered"
    for name, command in group.commands.items():
        assert command.help and command.help.strip(), f"{name} has no help text"
        assert invoke(name, "--help").exit_code == 0


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from labeler.cli import app\n"
        "for args in (['--help'], ['scan', '--help']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "heavy = [m for m in ('torch', 'torchvision', 'PIL', 'pandas') if m in sys.modules]\n"
        "print('heavy:', heavy)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("heavy: []")


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "labeler", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "scan" in done.stdout


def test_scan_then_datasets(tmp_path):
    folder = tmp_path / "photos"
    make.rgb_png(folder, "a.png")
    make.text_as_jpg(folder)
    result = invoke("scan", folder, "--db", tmp_path / "s.db")
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout and "unsupported" in result.stdout
    listed = invoke("datasets", "--json", "--db", tmp_path / "s.db")
    assert json.loads(listed.stdout) == [{"name": "photos", "images": 2, "ok": 1, "unsupported": 1}]


def test_scan_json_reports_counts(tmp_path):
    make.rgb_png(tmp_path / "photos", "a.png")
    result = invoke("scan", tmp_path / "photos", "--json")
    data = json.loads(result.stdout)
    assert data["new"] == 1 and data["by_status"] == {"ok": 1}
    assert (tmp_path / "labeler.db").exists()  # LABELER_DB, set for every test


def test_a_path_that_does_not_exist_is_a_one_line_error(tmp_path):
    result = invoke("scan", tmp_path / "absent")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: {tmp_path / 'absent'}: no such file or folder"
    ]
    assert "Traceback" not in result.output


def test_a_bad_store_is_a_one_line_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a database\n" * 200)
    result = invoke("datasets", "--db", tmp_path / "notes.txt")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot open the store" in result.stderr


@pytest.mark.slow
def test_the_built_wheel_carries_the_migrations(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        # the test extra installs the build backend: no build environment from the index
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
         str(wheels), str(ROOT)],
        check=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("labeler-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "labeler/migrations/env.py" in names
    assert any(n.startswith("labeler/migrations/versions/0001_") for n in names)
    target = tmp_path / "installed"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        check=True,
    )  # fmt: skip
    make.rgb_png(tmp_path / "elsewhere" / "photos", "a.png")
    env = {**os.environ, "PYTHONPATH": str(target), "LABELER_DB": str(tmp_path / "w.db")}
    code = "import labeler, sys; from labeler.__main__ import main; print(labeler.__file__); main()"
    done = subprocess.run(
        [sys.executable, "-c", code, "scan", "photos", "--json"],
        cwd=tmp_path / "elsewhere", env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first_line, json_text = done.stdout.split("\n", 1)
    assert first_line.startswith(str(target))  # the wheel's copy, not the checkout
    assert json.loads(json_text)["by_status"] == {"ok": 1}
