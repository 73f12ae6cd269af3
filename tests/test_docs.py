"""The docs scale with the tabs: every registered method has its page under docs/, the README links it, every
relative link (and anchor) in README.md and docs/*.md resolves, and the README stays a newcomer's page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from studio.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT = 25_000  # bytes; the README is also the page a Hugging Face Space shows
PAGES = [README, *sorted(DOCS.glob("*.md"))]

LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (links there are not links)."""
    return INLINE_CODE.sub("", CODE_FENCE.sub("", text))


def links(text: str) -> list[str]:
    return LINK.findall(prose(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text.replace("`", "")).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file (GitHub numbers repeated ones: x, x-1, x-2)."""
    seen: dict[str, int] = {}
    out = set()
    for line in CODE_FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file (or heading anchor) does not exist."""
    bad = []
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            bad.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no heading #{anchor} in {dest.name})")
    return bad


# ---- the checkers themselves ----

def test_the_link_checker_finds_missing_files_and_anchors_and_skips_code_and_urls(tmp_path):
    (tmp_path / "b.md").write_text("# Title\n\n## The `engine` (studio/)\n\n## Title\n")
    page = tmp_path / "a.md"
    page.write_text("# A\n[ok](b.md) [anchor](b.md#the-engine-studio) [repeat](b.md#title-1) [self](#a)\n"
                    "[web](https://example.org/x.md) `[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n"
                    "[gone](missing.md) [bad anchor](b.md#nope) ![img](pic.png)\n")
    bad = broken_links(page)
    assert [b.split(" ")[0] for b in bad] == ["missing.md", "b.md#nope", "pic.png"]


# ---- the project ----

@pytest.mark.parametrize("method_id", [m.id for m in METHODS])
def test_every_registered_method_has_its_page(method_id):
    page = DOCS / f"{method_id}.md"
    assert page.is_file(), f"docs/{method_id}.md is missing: every method in studio.methods.METHODS has a page"
    heads = anchors(page)
    for section in ("the-tab", "measured-figures", "reproduce"):
        assert section in heads, f"docs/{method_id}.md has no '## {section.replace('-', ' ').capitalize()}' section"


@pytest.mark.parametrize("method_id", [m.id for m in METHODS])
def test_the_readme_links_every_method_page(method_id):
    targets = [t.partition("#")[0] for t in links(README.read_text(encoding="utf-8"))]
    assert f"docs/{method_id}.md" in targets, f"README.md has no markdown link to docs/{method_id}.md"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: broken links: {broken_links(page)}"


def test_the_readme_stays_a_newcomers_page():
    text = README.read_text(encoding="utf-8")
    size = len(text.encode("utf-8"))
    assert size < README_LIMIT, (f"README.md is {size:,} bytes (limit {README_LIMIT:,}): move per-method detail "
                                 "to docs/<method>.md")
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", quickstart, re.DOTALL).group(1)
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make studio", "make test"]
    for command in ("make bench", "make notebooks"):
        assert f"`{command}" in text, f"README.md does not mention {command}"
