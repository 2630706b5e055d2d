"""examples/blob-pipeline runs as its README says: against a real `shoal up` whose linked storage
is a real Azurite, it uploads inputs, fans out, merges through a dependency, uploads and checks
the result (issue 9's newcomer workflow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.storage import fixtures

azurite, shoal = fixtures.azurite, fixtures.shoal

PIPELINE = Path(__file__).resolve().parents[2] / "examples" / "blob-pipeline" / "pipeline.py"


def test_the_pipeline_counts_the_words_through_blob_storage(shoal: Any, azurite: Any) -> None:
    env = dict(os.environ, AZURE_BATCH_ENDPOINT=shoal.endpoint, AZURE_BATCH_ACCOUNT=shoal.account,
               AZURE_BATCH_ACCESS_KEY=shoal.primary_key, AZURE_STORAGE_CONNECTION_STRING=azurite.connection_string)
    done = subprocess.run([sys.executable, str(PIPELINE), "--timeout", "120"], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert done.stdout.strip() == "total words: 42 (expected 42)"
