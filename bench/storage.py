"""Resource-file download and output-file upload throughput against Azurite (issue 9).

A benchmark, not a test: it prints figures and ratios. It starts a real Azurite and a fresh
`shoal up` with one local node, then times four transfers two ways in the same run:

- the direct copy: the official `azure-storage-blob` client, one `ContainerClient` in this
  process, the blobs one after another (as a script would copy them);
- through Shoal: a task whose `resourceFiles` (a container SAS and a blob prefix) or
  `outputFiles` (a pattern and a container SAS) move the same bytes, timed from the task's add to
  its completion, minus the same task without the transfer (its command, its scheduling and its
  polling), measured right before it.

The four transfers: 1,000 small files (1 KiB each) and one 256 MiB file, each down and up.
Target: Shoal within 1.5x of the direct copy.

    python bench/storage.py [--small-files 1000] [--big-mib 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from azure.batch import models  # noqa: E402
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas  # noqa: E402

from shoal.testing.server import kill_agents, start_shoal, stop_shoal  # noqa: E402
from tests.storage.azurite import ACCOUNT, KEY, Azurite, running_azurite  # noqa: E402

TARGET_RATIO = 1.5
POOL = "bench-storage"
POLL_S = 0.02


def _sas(azurite: Azurite, container: str, permission: str) -> str:
    token = generate_container_sas(ACCOUNT, container, account_key=KEY,
                                   permission=ContainerSasPermissions.from_string(permission),
                                   expiry=datetime.now(UTC) + timedelta(hours=2))
    return f"{azurite.blob_endpoint}/{container}?{token}"


def _timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


class Tasks:
    """Runs one task at a time on the pool's node and times it from add to completed."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.count = 0
        client.create_job(models.BatchJobCreateOptions(id="bench", pool_info=models.BatchPoolInfo(pool_id=POOL)))

    def run(self, command: str, **extra: Any) -> float:
        self.count += 1
        task_id = f"t{self.count}"
        started = time.perf_counter()
        self.client.create_task("bench", models.BatchTaskCreateOptions(
            id=task_id, command_line=f"/bin/sh -c '{command}'", **extra))
        while (task := self.client.get_task("bench", task_id)).state != "completed":
            time.sleep(POLL_S)
        elapsed = time.perf_counter() - started
        info = task.execution_info
        if info.result != "success":
            raise SystemExit(f"task {task_id} ({command!r}) failed: {info.failure_info}")
        return elapsed

    def transfer_time(self, command: str, **transfer: Any) -> float:
        """The task's time with the transfer minus the same task's time without it, run just
        before (so both pay the same scheduling, command and polling)."""
        bare = self.run(command)
        with_transfer = self.run(command, **transfer)
        return max(with_transfer - bare, 1e-6)


def _wait_idle(client: Any) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = [node.state for node in client.list_nodes(POOL)]
        if states == ["idle"]:
            return
        time.sleep(0.2)
    raise SystemExit(f"the node did not become idle: {states}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small-files", type=int, default=1000)
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each figure; the median is printed")
    args = parser.parse_args()
    small_payload = b"x" * 1024
    big_bytes = args.big_mib * 2**20

    with tempfile.TemporaryDirectory() as tmp_text:
        tmp = Path(tmp_text)
        (tmp / "azurite").mkdir()
        with running_azurite(tmp / "azurite") as azurite:
            blobs = BlobServiceClient.from_connection_string(azurite.connection_string)
            inputs = blobs.get_container_client("inputs")
            inputs.create_container()
            blobs.get_container_client("outputs").create_container()
            for i in range(args.small_files):
                inputs.upload_blob(f"small/f{i:05d}", small_payload)
            big_file = tmp / "big.bin"
            with open(big_file, "wb") as out:
                out.truncate(big_bytes)
            with open(big_file, "rb") as data:
                inputs.upload_blob("big/big.bin", data, max_concurrency=4)
            figures = _measure(tmp, azurite, blobs, args, small_payload, big_file)

    print(f"{'transfer':<28}{'direct':>10}{'shoal':>10}{'ratio':>8}   (target ratio < {TARGET_RATIO})")
    for name, (direct, through) in figures.items():
        print(f"{name:<28}{direct:>9.2f}s{through:>9.2f}s{through / direct:>7.2f}x")
    return 0


def _measure(tmp: Path, azurite: Azurite, blobs: BlobServiceClient, args: argparse.Namespace,
             small_payload: bytes, big_file: Path) -> dict[str, tuple[float, float]]:
    inputs = blobs.get_container_client("inputs")
    outputs = blobs.get_container_client("outputs")
    small_names = [f"small/f{i:05d}" for i in range(args.small_files)]
    local = tmp / "direct"
    local.mkdir()

    def direct_small_down() -> None:
        for name in small_names:
            with open(local / name.replace("/", "_"), "wb") as out:
                inputs.download_blob(name).readinto(out)

    def direct_big_down() -> None:
        with open(local / "big.bin", "wb") as out:
            inputs.download_blob("big/big.bin", max_concurrency=4).readinto(out)

    def direct_small_up() -> None:
        for i in range(args.small_files):
            outputs.upload_blob(f"direct/small/f{i:05d}", small_payload, overwrite=True)

    def direct_big_up() -> None:
        with open(big_file, "rb") as data:
            outputs.upload_blob("direct/big.bin", data, overwrite=True, max_concurrency=4)

    shoal = start_shoal(tmp / "shoal", extra_args=["--auto-storage", azurite.connection_string])
    try:
        client = shoal.client()
        client.create_pool(models.BatchPoolCreateOptions(
            id=POOL, vm_size="standard_d2s_v3", target_dedicated_nodes=1,
            virtual_machine_configuration=models.VirtualMachineConfiguration(
                image_reference=models.BatchVmImageReference(
                    publisher="canonical", offer="0001-com-ubuntu-server-jammy", sku="22_04-lts", version="latest"),
                node_agent_sku_id="batch.node.ubuntu 22.04")))
        _wait_idle(client)
        tasks = Tasks(client)
        read_sas = _sas(azurite, "inputs", "rl")
        write_sas = _sas(azurite, "outputs", "rwl")

        def upload_to(prefix: str, pattern: str) -> dict[str, Any]:
            return {"output_files": [models.OutputFile(
                file_pattern=pattern,
                destination=models.OutputFileDestination(container=models.OutputFileBlobContainerDestination(
                    container_url=write_sas, path=prefix)),
                upload_options=models.OutputFileUploadConfiguration(upload_condition="taskcompletion"))]}

        # One process writes the small files (a shell loop would spawn a thousand, whose cost on a
        # busy machine would swamp the transfer's).
        make_small = (f"mkdir -p out && awk \"BEGIN {{ for (i = 0; i < {args.small_files}; i++) "
                      f"{{ f = sprintf(\\\"out/f%05d\\\", i); printf \\\"%1024s\\\", \\\"\\\" > f; close(f) }} }}\"")
        make_big = f"head -c {big_file.stat().st_size} /dev/zero > big.bin"
        cases: dict[str, tuple[Callable[[], None], Callable[[], float]]] = {
            f"download {args.small_files} x 1 KiB": (direct_small_down, lambda: tasks.transfer_time(
                "true", resource_files=[models.ResourceFile(storage_container_url=read_sas, blob_prefix="small/")])),
            f"download 1 x {args.big_mib} MiB": (direct_big_down, lambda: tasks.transfer_time(
                "true", resource_files=[models.ResourceFile(storage_container_url=read_sas, blob_prefix="big/")])),
            f"upload {args.small_files} x 1 KiB": (direct_small_up, lambda: tasks.transfer_time(
                make_small, **upload_to("shoal/small", "out/*"))),
            f"upload 1 x {args.big_mib} MiB": (direct_big_up, lambda: tasks.transfer_time(
                make_big, **upload_to("shoal/big.bin", "big.bin"))),
        }
        figures: dict[str, tuple[float, float]] = {}
        for name, (direct, through_shoal) in cases.items():
            direct_s = statistics.median(_timed(direct) for _ in range(args.repeat))
            shoal_s = statistics.median(through_shoal() for _ in range(args.repeat))
            figures[name] = (direct_s, shoal_s)
            print(f"  measured {name}", file=sys.stderr)
        return figures
    finally:
        stop_shoal(shoal)
        kill_agents(tmp / "shoal")


if __name__ == "__main__":
    sys.exit(main())
