"""The README's Python snippet runs and its commands are the ones CI uses."""

import contextlib
import io
import re

from conftest import ROOT


def test_readme_snippet_runs():
    text = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.DOTALL).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(snippet, "README.md", "exec"), {})
    iterations, converged, small = out.getvalue().split()
    assert int(iterations) > 0 and converged == "True" and small == "True"


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_command():
    head = (ROOT / "README.md").read_text().split("\n\n")[1]
    assert "make demo" in head and "make test" in head
    assert "make test" in (ROOT / ".ci" / "run").read_text()
