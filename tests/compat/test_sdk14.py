"""The same basic flow passes with the previous SDK generation, azure-batch 14.2.0."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("sdk14_flow.py")


def sdk14_python() -> str:
    """The test command installs azure-batch 14.2.0 into its own venv and names it here."""
    python = os.environ.get("AZURE_BATCH_14_PYTHON") or str(Path(__file__).resolve().parents[2] / ".venv-sdk14"
                                                              / "bin" / "python")
    if not Path(python).exists():
        pytest.fail("azure-batch 14.2.0 venv missing: run the README's test command (scripts/test.sh)")
    return python


def test_basic_flow_with_azure_batch_14_2_0(shoal):
    result = subprocess.run([sdk14_python(), str(SCRIPT), shoal.endpoint, shoal.account, shoal.primary_key],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sdk14 flow ok 120" in result.stdout
