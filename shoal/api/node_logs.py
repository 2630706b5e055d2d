"""ComputeNode_UploadBatchServiceLogs: the node's agent uploads its logs to the container.

On the loop (the call to the agent goes through the loop's HTTP client); the store read goes to
a reader thread.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from shoal.api import versions
from shoal.api.http import json_response
from shoal.nodeclient import control as node_control
from shoal.nodeclient import files as node_files
from shoal.service import service_logs
from shoal.service.context import Context


async def upload_service_logs(request: Request, ctx: Context) -> Response:
    body, _size = await versions.read_json(request, "node.uploadbatchservicelogs")
    wanted = service_logs.parse(body)
    pool_id, node_id = request.path_params["pool_id"], request.path_params["node_id"]

    async def attempt() -> tuple[str, int]:
        address, token, folder = await request.state.runner.read(service_logs.locate, ctx, pool_id, node_id)
        count = await node_control.upload_service_logs(address, token, {**wanted, "directory": folder})
        return folder, count

    folder, count = await node_files.while_restarting(attempt)
    return json_response(request, {"virtualDirectoryName": folder, "numberOfFilesUploaded": count},
                         odata_type="Microsoft.Azure.Batch.Protocol.Entities.UploadBatchServiceLogsResult")


ROUTES = [
    ("/pools/{pool_id}/nodes/{node_id}/uploadbatchservicelogs", ["POST"], upload_service_logs),
]
