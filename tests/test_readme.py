"""The README's Python example runs as written (on the real default model: marked slow)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path):
    section = README.read_text().split("## Python", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "forward_passes" in done.stdout and (tmp_path / "runs" / "readme" / "final" / "model.safetensors").exists()
