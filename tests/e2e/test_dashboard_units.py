"""The dashboard's pure JavaScript (formatting and freshness, the page's model of the hub, how
frames are read) checked in Node.js: tests/e2e/page_units.mjs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="Node.js is installed by scripts/setup.sh test")
def test_page_modules_in_node() -> None:
    script = Path(__file__).with_name("page_units.mjs")
    done = subprocess.run([str(NODE), str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
