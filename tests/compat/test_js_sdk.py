"""The basic flow passes with the JavaScript SDK, @azure/batch from npm (tests/compat/js)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

JS = Path(__file__).with_name("js")


def node() -> str:
    """The test command (scripts/test.sh) installs node from Debian and the SDK with npm."""
    path = shutil.which("node")
    if path is None or not (JS / "node_modules" / "@azure" / "batch").is_dir():
        pytest.fail("node or @azure/batch missing: run the README's test command (scripts/test.sh)")
    return path


def test_basic_flow_with_the_javascript_sdk(shoal):
    result = subprocess.run([node(), str(JS / "flow.js"), shoal.endpoint, shoal.account, shoal.primary_key],
                            capture_output=True, text=True, timeout=180, cwd=JS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "@azure/batch 2022-10-01.16.0 flow ok 100" in result.stdout
