"""The package version moves with CHANGELOG.md: the version in pyproject.toml has its own dated section."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RELEASE = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", re.MULTILINE)


def test_the_package_version_has_a_dated_changelog_section_and_is_the_newest() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    changelog = (REPO / "CHANGELOG.md").read_text()
    releases = RELEASE.findall(changelog)
    headings = re.findall(r"^## \[([^\]]+)\]", changelog, re.MULTILINE)
    assert headings[0] == "Unreleased", "changes since the last release collect under [Unreleased], on top"
    assert releases and releases[0][0] == version, (
        f"pyproject.toml says {version}; the newest CHANGELOG.md release is {releases[:1]}"
    )
    dates = [date for _, date in releases]
    assert dates == sorted(dates, reverse=True), "releases are listed newest first"
    numbers = [tuple(int(part) for part in v.split(".")) for v, _ in releases]
    assert numbers == sorted(numbers, reverse=True) and len(set(numbers)) == len(numbers)
