"""The repository documents itself: no file points at a spec kept outside it, and the
relative links of the markdown pages lead to files (and headings) that exist."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve().relative_to(REPO).as_posix()

# The founding specs lived beside the checkout; docs/design.md and docs/variants.md replace
# them. DESIGN-NOTES.md (in the repository) is not one of them: the look-behind rejects it.
EXTERNAL_SPEC = re.compile(r"(?<![-\w])(DESIGN|VARIANTS|STYLE)\.md")
# [text](target) and ![alt](target), an optional "title" after the target
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def repository_files() -> list[str]:
    """Tracked files, and new ones git does not ignore (so a page is checked before its commit)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode()
    return sorted({name for name in listed.split("\0") if name and (REPO / name).is_file()})


def text_of(name: str) -> str | None:
    """The file's text, or None for a binary file."""
    data = (REPO / name).read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def spec_mentions(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every mention of an outside spec file."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if EXTERNAL_SPEC.search(line)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor, with GitHub's -1, -2... suffixes for repeated headings."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        base = slug(heading)
        count = seen.get(base, 0)
        out.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return out


def relative_links(markdown: str) -> list[str]:
    """Link targets that are not web or mail addresses, outside code blocks and code spans."""
    prose = INLINE_CODE.sub("", FENCE.sub("", markdown))
    return [target for target in LINK.findall(prose) if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)]


def broken_link(page: str, target: str) -> str | None:
    """Why `target`, linked from `page`, does not resolve; None when it does."""
    path, _, anchor = target.partition("#")
    destination = (REPO / page).parent / path if path else REPO / page
    try:
        destination.resolve().relative_to(REPO)
    except ValueError:
        return "points outside the repository"
    if not destination.exists():
        return "no such file"
    if anchor and destination.suffix == ".md" and anchor not in anchors(destination.read_text(encoding="utf-8")):
        return f"no heading with anchor #{anchor} in {destination.relative_to(REPO).as_posix()}"
    return None


def markdown_pages() -> list[str]:
    return [name for name in repository_files() if name == "README.md" or re.fullmatch(r"docs/[^/]+\.md", name)
            or name == "DESIGN-NOTES.md"]


def test_no_file_points_at_a_spec_outside_the_repository():
    found = []
    for name in repository_files():
        if name == THIS:
            continue
        text = text_of(name)
        if text is not None:
            found += [f"{name}:{number}: {line}" for number, line in spec_mentions(text)]
    assert not found, ("these lines name DESIGN.md, VARIANTS.md or STYLE.md, which are not in the repository; "
                       "point to docs/design.md, docs/variants.md or DESIGN-NOTES.md instead:\n" + "\n".join(found))


@pytest.mark.parametrize("line,mentions", [
    ("see DESIGN.md, 'The adapter protocol'", True),
    ("the math is in VARIANTS.md", True),
    ("../shared/STYLE.md says so", True),
    ("(DESIGN.md)", True),
    ("see DESIGN-NOTES.md", False),
    ("see docs/design.md and docs/variants.md", False),
    ("MY_DESIGN.md", False),
])
def test_the_spec_pattern_tells_outside_specs_from_in_repo_pages(line, mentions):
    assert bool(spec_mentions(line)) is mentions


def test_relative_links_in_the_docs_lead_to_files_that_exist():
    pages = markdown_pages()
    assert {"README.md", "docs/design.md", "docs/variants.md"} <= set(pages)
    broken = []
    for page in pages:
        for target in relative_links((REPO / page).read_text(encoding="utf-8")):
            why = broken_link(page, target)
            if why:
                broken.append(f"{page}: ({target}) {why}")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_link_checks_catch_missing_files_anchors_and_outside_paths():
    assert relative_links("[a](docs/x.md) ![b](img/y.png) [c](https://e.org) `[d](z.md)` [e](#top)") == \
        ["docs/x.md", "img/y.png", "#top"]
    assert broken_link("README.md", "docs/design.md") is None
    assert broken_link("README.md", "docs/design.md#the-adapter-hooks") is None
    assert broken_link("docs/design.md", "no_such_page.md") == "no such file"
    assert "no heading" in broken_link("docs/design.md", "variants.md#no-such-section")
    assert broken_link("docs/design.md", "../../shared/DESIGN.md") == "points outside the repository"
    assert slug("1-worker trials run inline (changed from \"one Ray Train run per trial\")") == \
        "1-worker-trials-run-inline-changed-from-one-ray-train-run-per-trial"
    assert slug("adapter_params = what the export holds") == "adapter_params--what-the-export-holds"


MODULE_LINES = 400  # issue 19: a module a reader can hold in mind


def test_each_module_says_what_it_owns_stays_short_and_is_in_the_layout():
    """Every module of the driver and the worker opens with a docstring, is at most
    MODULE_LINES long, and is named in docs/design.md's Layout tables (adapters: the folder)."""
    import ast

    layout = (REPO / "docs" / "design.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    problems = []
    for path in sorted([*REPO.rglob("raysearch/**/*.py"), *REPO.glob("trainables/*.py"),
                        *REPO.glob("trainables/adapters/*.py")]):
        name = path.relative_to(REPO).as_posix()
        if path.name == "__init__.py" and not path.read_text().strip():
            continue
        text = path.read_text()
        if not (ast.get_docstring(ast.parse(text)) or "").strip():
            problems.append(f"{name}: no docstring saying what it owns")
        if path.name == "__init__.py" and name != "raysearch/__init__.py":
            continue  # a folder's docstring says what it holds; its modules are in the tables
        if len(text.splitlines()) > MODULE_LINES:
            problems.append(f"{name}: {len(text.splitlines())} lines (> {MODULE_LINES})")
        if "adapters/" not in name and f"`{name}`" not in layout:
            problems.append(f"{name}: not in docs/design.md's Layout")
    assert not problems, "\n".join(problems)
