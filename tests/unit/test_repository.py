"""The repository stands alone and says where things are: no file names a path outside it or a
tracker's issue number, and README.md's layout lists every module of the package."""

from __future__ import annotations

import pkgutil
import re
import subprocess
from pathlib import Path

import listener

ROOT = Path(__file__).resolve().parents[2]

# A relative path that climbs out of its folder (the repository's files name only paths inside
# it, from its root) and a tracker's issue number (there is no tracker to resolve it).
_OUTSIDE = re.compile(r"\.\./\w|\bissues?\s+#?\d+\b", re.IGNORECASE)


def _tracked_text_files() -> list[Path]:
    """The repository's files as git knows them (committed or added), text only."""
    done = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    files = []
    for name in done.stdout.splitlines():
        path = ROOT / name
        if path.is_file() and b"\0" not in path.read_bytes()[:4096]:
            files.append(path)
    return files


def _outside_references(text: str) -> list[str]:
    return [match.group(0) for match in _OUTSIDE.finditer(text)]


def test_the_check_sees_what_it_looks_for() -> None:
    issue = "issue"
    up = ".."
    assert _outside_references(f"see {up}/notes and {issue} 12, {issue}s 3") == [
        f"{up}/n",
        f"{issue} 12",
        f"{issue}s 3",
    ]
    assert _outside_references("see docs/design.md; an issue of 3 kinds; cd .. && ls") == []


def test_no_file_names_a_path_outside_the_repository_or_an_issue_number() -> None:
    files = _tracked_text_files()
    assert len(files) > 50
    offending = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for word in _outside_references(line):
                offending.append(f"{path.relative_to(ROOT)}:{number}: {word}")
    assert offending == []


def test_the_design_document_exists_and_is_cited() -> None:
    assert (ROOT / "docs" / "design.md").is_file()
    assert "docs/design.md" in (ROOT / "README.md").read_text()


def _layout() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_the_readme_layout_lists_every_module() -> None:
    layout = _layout()
    listed = set(re.findall(r"^\s+([\w]+/?)\s", layout, re.M))
    missing = []
    for info in pkgutil.walk_packages(listener.__path__, prefix="listener."):
        name = info.name.rsplit(".", 1)[1]
        if name == "__init__":
            continue
        if (name + "/" if info.ispkg else name) not in listed:
            missing.append(info.name)
    assert missing == []
