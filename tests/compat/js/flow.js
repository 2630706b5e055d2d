// The basic flow with the JavaScript SDK, @azure/batch (api-version 2022-10-01.16.0):
// pool -> node idle -> job -> task collection -> counts -> task list -> stdout.
// Run by tests/compat/test_js_sdk.py as `node flow.js ENDPOINT ACCOUNT KEY`.
"use strict";
const { BatchServiceClient, BatchSharedKeyCredentials } = require("@azure/batch");

const [endpoint, account, key] = process.argv.slice(2);
const client = new BatchServiceClient(new BatchSharedKeyCredentials(account, key), endpoint);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const TASKS = 100; // one addCollection call: this SDK does not chunk

async function listAll(first, next) {
  const out = [];
  let page = await first();
  out.push(...page);
  while (page.nextLink) {
    page = await next(page.nextLink);
    out.push(...page);
  }
  return out;
}

async function readAll(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  return Buffer.concat(chunks).toString("utf8");
}

async function main() {
  await client.pool.add({
    id: "js", vmSize: "STANDARD_D2S_V3", targetDedicatedNodes: 1, taskSlotsPerNode: 4,
    virtualMachineConfiguration: {
      imageReference: { publisher: "canonical", offer: "0001-com-ubuntu-server-jammy", sku: "22_04-lts",
                        version: "latest" },
      nodeAgentSKUId: "batch.node.ubuntu 22.04",
    },
  });
  const pool = await client.pool.get("js");
  if (pool.taskSlotsPerNode !== 4) throw new Error(`taskSlotsPerNode ${pool.taskSlotsPerNode}`);
  const deadline = Date.now() + 60000;
  for (;;) {
    const nodes = await listAll(() => client.computeNode.list("js"), (link) => client.computeNode.listNext(link));
    if (nodes.some((n) => n.state === "idle")) break;
    if (Date.now() > deadline) throw new Error("node did not become idle");
    await sleep(200);
  }
  await client.job.add({ id: "js-job", poolInfo: { poolId: "js" } });
  const tasks = [];
  for (let i = 0; i < TASKS; i++) tasks.push({ id: `t${i}`, commandLine: `/bin/echo hello-${i}` });
  const added = await client.task.addCollection("js-job", tasks);
  const failed = added.value.filter((r) => r.status !== "success");
  if (failed.length) throw new Error(JSON.stringify(failed));
  let counts;
  for (;;) {
    counts = await client.job.getTaskCounts("js-job");
    if (counts.taskCounts.completed === TASKS) break;
    if (Date.now() > deadline + 60000) throw new Error(JSON.stringify(counts));
    await sleep(200);
  }
  if (counts.taskCounts.succeeded !== TASKS || counts.taskSlotCounts.succeeded !== TASKS) {
    throw new Error(JSON.stringify(counts));
  }
  const listed = await listAll(() => client.task.list("js-job"), (link) => client.task.listNext(link));
  if (listed.length !== TASKS) throw new Error(`listed ${listed.length} tasks`);
  const file = await client.file.getFromTask("js-job", "t3", "stdout.txt");
  const stdout = await readAll(file.readableStreamBody);
  if (stdout !== "hello-3\n") throw new Error(`stdout ${JSON.stringify(stdout)}`);
  console.log("@azure/batch", client.apiVersion, "flow ok", counts.taskCounts.succeeded);
}

main().catch((error) => {
  console.error(error && (error.body ? JSON.stringify(error.body) : error.stack || error));
  process.exit(1);
});
