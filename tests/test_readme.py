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
