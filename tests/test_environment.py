"""The two dependency lists (pip's pyproject.toml, conda's environment.yml) must agree."""
import re
import tomllib
from pathlib import Path

import yaml

import hwutils

ROOT = Path(__file__).resolve().parents[1]


def requirement_map(lines):
    pins = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*([<>=!~].*)?$", line)
        if match and not line.startswith("-"):
            pins[match.group(1).lower().replace("_", "-")] = (match.group(2) or "").replace(" ", "")
    return pins


def pyproject_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines += extra
    return requirement_map(lines)


def conda_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    return requirement_map(pip_lists[0])


def test_torch_and_torchvision_are_pinned_exactly():
    pins = pyproject_pins()
    assert pins["torch"] == "==2.14.1" and pins["torchvision"] == "==0.29.1"


def test_environment_yml_lists_the_same_pins_as_pyproject():
    assert conda_pins() == pyproject_pins()


SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13", "3.14")  # torch 2.14.1 has wheels for these


def test_pip_and_conda_accept_the_supported_pythons_and_nothing_older():
    from packaging.specifiers import SpecifierSet

    requires = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str) and re.match(r"python\b", d)]
    assert len(conda) == 1, "environment.yml must list python once"
    conda_spec = SpecifierSet(conda[0][len("python"):].replace(" ", ""))
    for version in SUPPORTED_PYTHONS:
        assert version in requires and version in conda_spec, version
    assert "3.10" not in requires and "3.10" not in conda_spec


def test_the_pdf_toolchain_is_pinned_as_a_tested_pair():
    pins = pyproject_pins()
    assert pins["pypandoc-binary"].startswith("==") and pins["typst"].startswith("==")


def test_package_exposes_a_version_and_its_public_api():
    assert re.fullmatch(r"\d+\.\d+\.\d+", hwutils.__version__)
    for name in hwutils.__all__:
        assert getattr(hwutils, name).__doc__ or name == "__version__", f"{name} has no docstring"
