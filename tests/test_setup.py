"""Specifications of `make setup`: the stamp marks a complete set-up only; a half-made .venv is rebuilt.

Runs the real Makefile in a scratch copy with a fake interpreter (no 5.5 GB install): the fake
`python -m venv` makes a .venv whose python logs each call and fails `pip install` on request.
"""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")

VENV_PYTHON = textwrap.dedent("""\
    #!/bin/sh
    echo "$*" >> "$(dirname "$0")/../calls.log"
    case "$*" in
      *"pip install"*" -e "*) [ -e "$FAKE_FAIL_PIP" ] && { echo "ERROR: pip broke" >&2; exit 1; } ;;
    esac
    exit 0
""")
BASE_PYTHON = textwrap.dedent(f"""\
    #!/bin/sh
    case "$1" in
      -c) exec "{sys.executable}" -c "import sys; sys.version_info = tuple(map(int, '${{FAKE_VERSION:-3.11}}'.split('.')))
    exec(sys.argv[1])" "$2" ;;
      -m) mkdir -p "$3/bin" && cp "{{venv_python}}" "$3/bin/python" && chmod +x "$3/bin/python" ;;
    esac
""")


@pytest.fixture
def project(tmp_path):
    """A scratch copy of the Makefile and pyproject.toml, and a fake python3.11."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "venv_python").write_text(VENV_PYTHON)
    (fake / "python3").write_text(BASE_PYTHON.replace("{venv_python}", str(fake / "venv_python")))
    (fake / "python3").chmod(0o755)
    return tmp_path


def make_setup(project, **env):
    full_env = {**os.environ, "FAKE_FAIL_PIP": str(project / "fail-pip"), **env}
    return subprocess.run(["make", "--no-print-directory", "setup", f"PYTHON={project / 'fake' / 'python3'}"],
                          cwd=project, env=full_env, capture_output=True, text=True, timeout=60)


def test_setup_writes_the_stamp_only_after_every_step_succeeded(project):
    result = make_setup(project)
    assert result.returncode == 0, result.stderr
    assert (project / ".venv" / ".installed").exists()
    calls = (project / ".venv" / "calls.log").read_text()
    assert "pip install -q -e .[report,test]" in calls and "ipykernel install" in calls


def test_a_failed_install_leaves_no_stamp_and_says_how_to_recover(project):
    (project / "fail-pip").touch()
    result = make_setup(project)
    assert result.returncode != 0
    assert not (project / ".venv" / ".installed").exists()
    assert "make setup: pip install -e .[report,test] failed" in result.stderr and "rm -rf .venv" in result.stderr


def test_a_half_made_venv_is_removed_and_rebuilt_on_the_next_setup(project):
    (project / "fail-pip").touch()
    make_setup(project)
    (project / ".venv" / "leftover").write_text("from the failed attempt")
    (project / "fail-pip").unlink()
    result = make_setup(project)
    assert result.returncode == 0, result.stderr
    assert "half-made" in result.stdout
    assert not (project / ".venv" / "leftover").exists() and (project / ".venv" / ".installed").exists()


def test_a_complete_venv_is_updated_in_place_when_pyproject_changes(project):
    make_setup(project)
    (project / ".venv" / "kept").write_text("a complete set-up")
    stamp = project / ".venv" / ".installed"
    os.utime(stamp, (stamp.stat().st_mtime - 10,) * 2)  # pyproject.toml is now newer
    result = make_setup(project)
    assert result.returncode == 0, result.stderr
    assert "updating" in result.stdout and (project / ".venv" / "kept").exists()


def test_a_python_older_than_requires_python_stops_before_creating_anything(project):
    result = make_setup(project, FAKE_VERSION="3.10")
    assert result.returncode != 0 and not (project / ".venv").exists()
    assert "is Python 3.10, this project needs Python 3.11 or newer" in result.stderr and "PYTHON=" in result.stderr


def test_a_newer_python_is_accepted(project):
    assert make_setup(project, FAKE_VERSION="3.12").returncode == 0
