"""README.md and docs/*.md: every file they link to or name exists, and the README stays short.

Checked in each page, outside fenced code blocks (those hold commands with example arguments):
- markdown links ``[text](path)`` (images too) and ``<img src=...>`` / ``<a href=...>``, resolved relative to the
  page; a ``#fragment`` into a markdown page must name one of its headings (GitHub's anchors);
- every word of an inline code span that looks like a repo path: relative, not a URL, with a folder part
  (``smilekit/vision/faces.py``, ``deploy/kubernetes/``) and ending in a known extension or a slash, resolved relative
  to the page or to the repository root. Files the app or the commands write (``GENERATED``) are not checked.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
#: the README is read in two minutes
README_MAX_LINES = 160
#: paths the pages name that running the app or the commands creates; they are not in a checkout
GENERATED = {".venv/", "outputs/feedback.db", "outputs/models/", "outputs/retrain/", "outputs/model.pt",
             "outputs/train-run.ipynb", "outputs/audit/"}
EXTENSIONS = ("py", "md", "ipynb", "json", "yml", "yaml", "toml", "txt", "js", "css", "html", "j2", "jpg", "jpeg",
              "png", "gif", "svg", "onnx", "pt", "template", "csv", "cfg", "ini", "db", "sh")

FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
MD_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
REPO_PATH = re.compile(r"(?:\.{1,2}/)*[\w.-]+(?:/[\w.-]+)*/?")


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks."""
    return FENCE.sub("", text)


def links(text: str) -> list[str]:
    """Relative link targets of a markdown page (URLs, mail and in-page anchors left out)."""
    prose = CODE_SPAN.sub("", _prose(text))
    found = MD_LINK.findall(prose) + HTML_LINK.findall(prose)
    return [t for t in found if not SCHEME.match(t) and not t.startswith(("#", "//"))]


def is_repo_path(word: str) -> bool:
    if not REPO_PATH.fullmatch(word) or "/" not in word.rstrip("/"):
        return False  # a URL, a command, a placeholder, or a bare name with no folder part
    if word.endswith("/"):
        return True
    return "." in word.rsplit("/", 1)[-1] and word.rsplit(".", 1)[-1].lower() in EXTENSIONS


def code_paths(text: str) -> list[str]:
    """Words of the inline code spans of a page that look like repository paths."""
    return [word for _, span in CODE_SPAN.findall(_prose(text)) for word in span.split() if is_repo_path(word)]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a markdown page's headings: lower case, punctuation dropped, spaces as hyphens."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", _prose(page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def missing(page: Path, text: str | None = None) -> list[str]:
    """What ``page`` (or ``text`` as if it were that page) names that does not exist, one line each."""
    text = page.read_text() if text is None else text
    problems = []
    for target in links(text):
        path, _, fragment = unquote(target).partition("#")
        path = path.split("?", 1)[0]
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            problems.append(f"link {target}: no {resolved}")
        elif fragment and resolved.suffix == ".md" and fragment.lower() not in anchors(resolved):
            problems.append(f"link {target}: no heading #{fragment} in {resolved.name}")
    for word in code_paths(text):
        if word in GENERATED:
            continue
        if not ((page.parent / word).exists() or (ROOT / word).exists()):
            problems.append(f"`{word}`: neither {page.parent / word} nor {ROOT / word} exists")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_named_paths_exist(page):
    assert not missing(page), f"{page.relative_to(ROOT)} names what does not exist:\n" + "\n".join(missing(page))


def test_the_checker_finds_what_is_missing():
    text = ("See [the card](smilekit/MODEL_CARD.md), [gone](docs/gone.md), [bad anchor](docs/serving.md#no-such),\n"
            '<img src="docs/app-desktop.jpg"> <img src="docs/none.jpg"> [web](https://example.org/x.md),\n'
            "`smilekit/vision/faces.py`, `smilekit/align.py`, `benchmarks/bench_model.py --data DIR`, `deploy/kubernetes/`,\n"
            "`outputs/feedback.db`, `smilekit.vision.faces.cut_face`, `postgresql+psycopg2://u@h/db`, `photo.jpg`.\n"
            "```bash\nsmilekit predict not/here.jpg\n```\n")
    problems = missing(README, text)
    assert len(problems) == 4, problems
    for name in ("docs/gone.md", "#no-such", "docs/none.jpg", "smilekit/align.py"):
        assert any(name in p for p in problems), (name, problems)


def test_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_links_every_docs_page_and_the_model_card():
    targets = {(ROOT / unquote(t).partition("#")[0]).resolve() for t in links(README.read_text())}
    for page in [*sorted(DOCS.glob("*.md")), ROOT / "smilekit" / "MODEL_CARD.md"]:
        assert page.resolve() in targets, f"README.md does not link {page.relative_to(ROOT)}"


def test_readme_model_table_is_marked():
    """The model table sits between markers, so a new model's table can replace it."""
    text = README.read_text()
    assert text.count("<!-- model-table -->") == 1 and text.count("<!-- /model-table -->") == 1
    table = text.split("<!-- model-table -->", 1)[1].split("<!-- /model-table -->", 1)
    assert len(table) == 2, "<!-- /model-table --> must come after <!-- model-table -->"
    rows = [line for line in table[0].splitlines() if line.startswith("|")]
    assert len(rows) >= 3 and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", rows[1]), "a markdown table between the markers"
