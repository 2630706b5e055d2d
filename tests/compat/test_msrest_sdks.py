"""The same basic flow passes with each release of the previous SDK generation (msrest-based
azure-batch 11.0.0, 12.0.0, 13.0.0 and 14.2.0), each speaking its own api-version."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("msrest_sdk_flow.py")
# SDK major version -> (release, the api-version it sends).
RELEASES = {
    11: ("11.0.0", "2021-06-01.14.0"),
    12: ("12.0.0", "2022-01-01.15.0"),
    13: ("13.0.0", "2022-10-01.16.0"),
    14: ("14.2.0", "2024-02-01.19.0"),
}


def sdk_python(major: int) -> str:
    """The test command installs each release into its own venv (.venv-sdkNN) and may name it
    in $AZURE_BATCH_NN_PYTHON."""
    python = os.environ.get(f"AZURE_BATCH_{major}_PYTHON") or str(
        Path(__file__).resolve().parents[2] / f".venv-sdk{major}" / "bin" / "python")
    if not Path(python).exists():
        pytest.fail(f"azure-batch {RELEASES[major][0]} venv missing: run the README's test command "
                    "(scripts/test.sh)")
    return python


@pytest.mark.parametrize("major", sorted(RELEASES), ids=[RELEASES[m][0] for m in sorted(RELEASES)])
def test_basic_flow_with_an_msrest_azure_batch(shoal, major):
    release, api_version = RELEASES[major]
    result = subprocess.run([sdk_python(major), str(SCRIPT), shoal.endpoint, shoal.account, shoal.primary_key,
                             f"sdk{major}"], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"azure-batch {release} {api_version} flow ok 120" in result.stdout
