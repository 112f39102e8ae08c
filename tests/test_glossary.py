"""The glossary is written once (harness/glossary.py); docs/glossary.md and `harness --help` show it."""

from pathlib import Path

from harness.glossary import GLOSSARY, glossary_text

DOC = Path(__file__).resolve().parents[1] / "docs" / "glossary.md"


def test_the_docs_page_holds_every_term_with_the_same_meaning():
    rows = {
        line.split(" | ")[0].strip("| "): line.split(" | ")[1].rstrip(" |")
        for line in DOC.read_text().splitlines()
        if line.startswith("| ") and " | " in line and not line.startswith("| term") and not line.startswith("| ---")
    }
    assert rows == GLOSSARY


def test_the_terminal_text_names_every_term_once():
    text = glossary_text()
    for term in GLOSSARY:
        assert sum(line.startswith(f"  {term} ") for line in text.splitlines()) == 1, term
    assert max(map(len, text.splitlines())) <= 100


def test_harness_help_shows_the_glossary_and_examples():
    from harness.cli import build_parser

    help_text = build_parser().format_help()
    assert glossary_text() in help_text
    assert "harness run -m diffusion.schedule=linear,cosine" in help_text
