"""The package's layout, checked on the sources (nothing is imported or run but the network guard).

* ``imagen_edu`` is what a reader imports: the test harness (the pytest plugin, the headless
  browser driver, the DDP script) lives in ``conftest.py`` and ``tests/``, so no module of the
  package imports pytest, nbval, a browser driver or the tests' helpers, or drives Chromium;
* the package and the README cite no file outside the repository (they once sent readers to a
  ``DESIGN.md`` that was never in it);
* the root ``conftest.py`` refuses outgoing connections during every test run.
"""

from __future__ import annotations

import ast
import re
import socket
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "imagen_edu"
MODULES = sorted(PACKAGE.rglob("*.py"))

#: top-level names whose import marks a module as test harness, not package
HARNESS_IMPORTS = {"pytest", "_pytest", "nbval", "conftest", "support",  # the test runner, tests/support
                   "playwright", "selenium", "pyppeteer", "websocket", "websockets"}  # browser drivers
#: a module that launches a browser itself (as tests/support/browser.py does) mentions one of these
BROWSER_WORDS = re.compile(r"chromium|chrome|--headless|--dump-dom", re.IGNORECASE)
#: a path inside the repository, e.g. ``book/03_ddpm.ipynb`` or ``data/checkpoints/manifest.json``
REPO_PATH = re.compile(r"\b(?:book|data|tests|imagen_edu)/[\w./-]*\w\.\w+\b")
#: a top-level document, e.g. ``README.md``
TOP_DOC = re.compile(r"(?<![\w./-])[\w-]+\.md\b")


def imported_names(path: Path) -> set[str]:
    """Top-level module names imported anywhere in ``path`` (function-local imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def cited_files(text: str) -> list[str]:
    """Repository paths and top-level ``*.md`` documents named in ``text``."""
    return REPO_PATH.findall(text) + TOP_DOC.findall(text)


def test_package_modules_import_no_test_harness():
    """Issue 14: the harness moved out of ``imagen_edu``; no package module imports pytest, nbval,
    a browser driver or tests/support (function-local imports count)."""
    offenders = {str(p.relative_to(ROOT)): sorted(imported_names(p) & HARNESS_IMPORTS) for p in MODULES}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"test-harness imports inside the package: {offenders}"


def test_package_modules_drive_no_browser():
    """Issue 14: the headless-Chromium driver lives in tests/support/browser.py, not in the package."""
    offenders = [str(p.relative_to(ROOT)) for p in MODULES if BROWSER_WORDS.search(p.read_text())]
    assert not offenders, f"modules that drive a browser: {offenders}"


def test_pytest_loads_no_plugin_from_the_package():
    """Issue 14: pytest's options load no ``-p imagen_edu...`` plugin (the root conftest.py is the plugin)."""
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "imagen_edu" not in ini.get("addopts", "")
    assert "imagen_edu" not in " ".join(ini.get("plugins", []) + ini.get("required_plugins", []))
    assert (ROOT / "conftest.py").is_file()


@pytest.mark.parametrize("path", [*MODULES, ROOT / "README.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_cites_no_file_outside_the_repository(path):
    """Issue 14: the package and the README cite no file that is not in the repository (no DESIGN.md)."""
    text = path.read_text()
    assert not re.search(r"\bDESIGN\b", text), f"{path.name} refers to DESIGN, which is not in the repository"
    missing = sorted({f for f in cited_files(text) if not (ROOT / f).exists()})
    assert not missing, f"{path.name} cites files that are not in the repository: {missing}"


def test_citation_check_sees_paths_and_documents():
    """The patterns above find what they must (else the test before would pass vacuously)."""
    text = "see DESIGN.md, (CONTRIBUTING.md) and book/03_ddpm.ipynb; data/checkpoints/manifest.json; out/meta.json"
    assert cited_files(text) == ["book/03_ddpm.ipynb", "data/checkpoints/manifest.json",
                                 "DESIGN.md", "CONTRIBUTING.md"]


def test_network_guard_refuses_other_hosts():
    """The root conftest.py's guard: a connection to a host other than this machine fails loudly."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        with pytest.raises(RuntimeError, match="tests must not use the network"):
            s.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed
        with pytest.raises(RuntimeError, match="tests must not use the network"):
            s.connect_ex(("192.0.2.1", 80))
