"""The documentation holds together: every relative link leads to a file of the repository, and
every ``#anchor`` to a heading of the page it names (GitHub's slugs), so that moving a page or
renaming a heading cannot strand a reader. The README stays short and keeps the commands that
CI and newcomers run."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The pages a reader moves between; generated and design pages are checked with the rest.
PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        ROOT / "benchmarks" / "README.md",
        *(ROOT / "docs").rglob("*.md"),
    ]
)

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); the text may hold one level of brackets.
INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)"
)
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\".*\")?\s*$")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _prose(text: str) -> Iterator[tuple[int, str]]:
    """Each line outside fenced code blocks, with its number."""
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lower case, without punctuation, spaces as '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link counts by its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor GitHub gives the headings of a page; repeats get -1, -2, …"""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in _prose(page.read_text()):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> Iterator[tuple[int, str]]:
    """Every link target on a page, outside code."""
    for number, line in _prose(page.read_text()):
        ref = REFERENCE_LINK.match(line)
        if ref:
            yield number, ref.group(1)
            continue
        for m in INLINE_LINK.finditer(CODE_SPAN.sub("code", line)):
            yield number, m.group(1)


def broken(page: Path, root: Path = ROOT) -> Iterator[str]:
    """What is wrong with each relative link of a page in the repository at ``root``."""
    root = root.resolve()
    for number, target in links(page):
        if not target or SCHEME.match(target):
            continue  # a web address: not ours to check offline
        where = f"{page.relative_to(root)}:{number}: {target}"
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.is_relative_to(root):
            yield f"{where}: leads outside the repository"
        elif not file.exists():
            yield f"{where}: no such file or directory"
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            yield f"{where}: no heading '{anchor}' in {file.relative_to(root)}"


def test_the_pages_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "CONTRIBUTING.md", "benchmarks/README.md", "docs/security.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    assert list(broken(page)) == []


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("The hub: `allot up`", "the-hub-allot-up"),
        ("1. Boundaries", "1-boundaries"),
        ("Logging in: PAM, LDAP, OAuth/OIDC", "logging-in-pam-ldap-oauthoidc"),
        ("What-if", "what-if"),
        ("The front door, against plain JupyterHub", "the-front-door-against-plain-jupyterhub"),
        ("Draining batch jobs, against Slurm", "draining-batch-jobs-against-slurm"),
        ("See [the API](docs/api.md) first", "see-the-api-first"),
        ("snake_case stays", "snake_case-stays"),
    ],
)
def test_slugs_are_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_broken_link_and_a_missing_heading_are_caught(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# Readme\n")
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Title\n\n## Part\n\n"
        "[fine](../README.md#readme) [fine too](#part) [web](https://example.org/x.md)\n"
        "[gone](nowhere.md) [no heading](#nothing) `[in code](nowhere.md)` [out](../../x.md)\n"
        "```\n[in a block](nowhere.md)\n```\n"
    )
    assert list(broken(page, tmp_path)) == [
        "docs/page.md:6: nowhere.md: no such file or directory",
        "docs/page.md:6: #nothing: no heading 'nothing' in docs/page.md",
        "docs/page.md:6: ../../x.md: leads outside the repository",
    ]


def test_the_readme_is_read_in_five_minutes() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 12 * 1024, f"README.md is {size} bytes: move the detail into a page of docs/"


def test_the_readme_gives_the_two_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "```sh\nscripts/start\n```" in readme
    assert "```sh\nscripts/test\n```" in readme
    assert "exec scripts/test" in (ROOT / ".ci" / "run").read_text()


def test_every_screenshot_is_shown_and_the_readme_shows_one() -> None:
    shown = {
        (page.parent / target).resolve()
        for page in PAGES
        for _, target in links(page)
        if target.endswith(".png") and not SCHEME.match(target)
    }
    screenshots = set((ROOT / "docs" / "screenshots").glob("*.png"))
    assert screenshots and screenshots <= shown
    assert any(target.startswith("docs/screenshots/") for _, target in links(ROOT / "README.md"))
