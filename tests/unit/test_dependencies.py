"""The declared dependencies (pyproject.toml) against the tested pins (requirements.lock) and the code.

``make`` installs the lock, so nothing else would notice a range in pyproject.toml that the pinned set
does not satisfy (an install from pyproject alone would then get untested versions), or an import of a
package that is only there because something else pulls it in.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from functools import cache
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]


_distributions = cache(packages_distributions)  # top-level module -> distributions, read once


@cache
def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _declared(*extras: str) -> list[Requirement]:
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def _all_declared() -> list[Requirement]:
    return _declared(*_pyproject()["project"]["optional-dependencies"])


@cache
def _lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"requirements.lock pins exact versions: {line!r}"
        pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def _unsatisfied(reqs: list[Requirement], env: dict[str, str]) -> list[str]:
    """The requirements (those whose marker applies in ``env``) that the lock misses or pins outside their range."""
    lock = _lock()
    problems = []
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        pinned = lock.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{req}: not in requirements.lock")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req}: requirements.lock pins {pinned}")
    return problems


def test_the_lock_satisfies_every_declared_requirement() -> None:
    assert _unsatisfied(_all_declared(), {"extra": ""}) == []


def test_the_lock_pins_what_the_declared_extras_of_dependencies_pull_in() -> None:
    """``feast[postgres,redis]`` means psycopg and redis too: the lock must hold them, in range."""
    problems = []
    for req in _all_declared():
        for extra in sorted(req.extras):
            try:
                theirs = [Requirement(r) for r in requires(req.name) or []]
            except PackageNotFoundError:
                problems.append(f"{req.name}: not installed, its extra {extra!r} cannot be checked")
                continue
            in_extra = [r for r in theirs if r.marker is not None and _mentions_extra(r.marker, extra)]
            assert in_extra, f"{req.name} has no extra {extra!r}"
            problems += [f"{p} (from {req.name}[{extra}])" for p in _unsatisfied(in_extra, {"extra": extra})]
    assert problems == []


def _mentions_extra(marker: Marker, extra: str) -> bool:
    return marker.evaluate({"extra": extra}) and not marker.evaluate({"extra": ""})


def _project_packages() -> list[str]:
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    return [pattern.rstrip("*") for pattern in include]


def _third_party_imports(paths: list[Path], local: set[str]) -> dict[str, set[str]]:
    """Top-level module name -> the files importing it, for every absolute import outside the stdlib."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text(), str(file))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".", 1)[0]
                    if top not in sys.stdlib_module_names and top not in local:
                        found.setdefault(top, set()).add(str(file.relative_to(REPO)))
    return found


def _undeclared(imports: dict[str, set[str]], declared: list[Requirement]) -> list[str]:
    distributions = _distributions()
    names = {canonicalize_name(r.name) for r in declared}
    # A meta-distribution (apache-airflow) ships no module of its own: what it requires directly
    # (apache-airflow-core, the task SDK) is what its users import.
    shipping = {canonicalize_name(d) for dists in distributions.values() for d in dists}
    for meta in names - shipping:
        try:
            theirs = [Requirement(r) for r in requires(meta) or []]
        except PackageNotFoundError:
            continue
        names |= {
            canonicalize_name(r.name) for r in theirs if r.marker is None or r.marker.evaluate({"extra": ""})
        }
    problems = []
    for module, files in sorted(imports.items()):
        providers = {canonicalize_name(d) for d in distributions.get(module, [])}
        if not providers:
            problems.append(
                f"{module} (imported by {sorted(files)[0]}): no installed distribution provides it"
            )
        elif not providers & names:
            problems.append(f"{module} (imported by {sorted(files)[0]}): declare one of {sorted(providers)}")
    return problems


def test_every_third_party_import_of_the_packages_is_a_runtime_dependency() -> None:
    packages = _project_packages()
    deployed = [*(REPO / p for p in packages), REPO / "dags", REPO / "plugins", REPO / "feature_repo"]
    imports = _third_party_imports(deployed, set(packages))
    assert {"torch", "feast", "airflow"} <= set(imports)  # the walk found the code
    assert _undeclared(imports, _declared()) == []


def test_every_third_party_import_of_the_tests_is_declared() -> None:
    packages = _project_packages()
    helpers = {p.stem for p in (REPO / "tests").glob("*.py")}
    imports = _third_party_imports([REPO / "tests"], {*packages, "tests", *helpers})
    assert "pytest" in imports
    assert _undeclared(imports, _all_declared()) == []


def test_an_undeclared_import_is_reported() -> None:
    """The check can fail: numpy imported, only pandas declared."""
    problems = _undeclared({"numpy": {"x.py"}}, [Requirement("pandas>=2")])
    assert problems == ["numpy (imported by x.py): declare one of ['numpy']"]
    assert _unsatisfied([Requirement("numpy<1")], {"extra": ""}) == [
        f"numpy<1: requirements.lock pins {_lock()['numpy']}"
    ]
