"""The README's API example runs as written; the docs' module map and links hold."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_readme_api_example_runs():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["images"].shape == (8, 1, 28, 28)
    assert scope["loss"].shape == (8,)


def test_module_map_names_every_module():
    """docs/architecture.md's module map lists each module once; a new file without a row fails here."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("## Module map") :]
    cells = re.findall(r"^\| `([\w/]+\.py)` \|", table, re.M)
    duplicates = sorted({cell for cell in cells if cells.count(cell) > 1})
    missing = []
    for package in ("harness", "analysis"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if path.name != "__init__.py" and rel not in cells:
                missing.append(rel)
    stale = sorted(cell for cell in set(cells) if not (ROOT / cell).is_file())
    assert not missing, f"modules without a row in docs/architecture.md's module map: {missing}"
    assert not stale, f"rows in docs/architecture.md's module map for modules that do not exist: {stale}"
    assert not duplicates, f"modules with more than one row in docs/architecture.md: {duplicates}"


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 260, f"README.md has {len(lines)} lines; move detail to docs/ (at most 260)"


def _relative_links(text: str) -> list[str]:
    """Targets of Markdown links and images, without URLs, mail links, in-page anchors or code spans."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_relative_links_point_to_existing_files():
    broken = []
    for page in [ROOT / "README.md", *DOCS]:
        for target in _relative_links(page.read_text()):
            path = target.split("#", 1)[0]
            if not (page.parent / path).resolve().exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, f"relative links to files that do not exist: {broken}"


def test_docs_pages_exist():
    names = {page.name for page in DOCS}
    expected = {
        "core.md", "specs-and-runs.md", "metrics.md", "tracking.md", "sweeps.md",
        "performance.md", "failures.md", "measured-results.md", "architecture.md",
    }  # fmt: skip
    assert expected <= names, f"missing docs pages: {sorted(expected - names)}"


def test_no_merge_conflict_markers_were_committed():
    # A conflict resolved by keeping both sides once left its markers in the module map, and no test noticed.
    texts = [ROOT / "README.md", ROOT / "Makefile", *DOCS, *ROOT.glob("experiments/*.yaml")]
    texts += [*ROOT.glob("harness/**/*.py"), *ROOT.glob("analysis/*.py"), *ROOT.glob("tests/*.py")]
    marker = re.compile(r"^(<{7} |>{7} |={7}$)", re.MULTILINE)
    assert [str(p.relative_to(ROOT)) for p in texts if marker.search(p.read_text())] == []
