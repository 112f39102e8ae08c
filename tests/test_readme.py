"""The README's API example runs as written."""

import re
from pathlib import Path


def test_readme_api_example_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["images"].shape == (8, 1, 28, 28)
    assert scope["loss"].shape == (8,)


def test_module_map_names_every_module():
    """The README's architecture table lists each module once; a new file without a row fails here."""
    root = Path(__file__).parents[1]
    text = (root / "README.md").read_text()
    table = text[text.index("## Architecture") :]
    cells = set(re.findall(r"`([\w/]+\.py)`", table))
    missing = []
    for package in ("harness", "analysis"):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if path.name == "__init__.py":
                continue
            # rows name a module by its path, or inside a layer's folder by its path below harness/
            if rel not in cells and rel.removeprefix("harness/") not in cells:
                missing.append(rel)
    assert not missing, f"modules without a row in README's architecture table: {missing}"
