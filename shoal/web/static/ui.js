// Shoal dashboard: live updates by polling. Hand-written, no dependencies, nothing from the network.
"use strict";

const POLL_MS = 2000;
const TAIL_MS = 1000;
const MAX_TAIL_CHARS = 1 << 20;  // what a viewer keeps; older text scrolls away

async function getJson(url) {
  const response = await fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}});
  if (response.status === 401 || response.redirected) { window.location.reload(); throw new Error("signed out"); }
  const body = await response.json();
  if (!response.ok) { throw new Error(body.error || ("HTTP " + response.status)); }
  return body;
}

// ---- heat map: one cell per node, coloured by a one-letter state ----
function heatMap(root) {
  const data = JSON.parse(document.getElementById("heat-data").textContent);
  let ids = data.ids || [];
  let digest = data.digest;
  const base = root.dataset.nodeBase;
  root.addEventListener("click", (event) => {
    const cell = event.target.closest("i[data-n]");
    if (cell && ids[Number(cell.dataset.n)]) { window.location.href = base + encodeURIComponent(ids[Number(cell.dataset.n)]); }
  });

  function draw(answer) {
    if (answer.ids) { ids = answer.ids; }
    digest = answer.digest;
    const states = answer.states;
    const disabled = new Set(answer.disabled || []);
    while (root.children.length > states.length) { root.lastChild.remove(); }
    while (root.children.length < states.length) {
      const cell = document.createElement("i");
      cell.dataset.n = String(root.children.length);
      root.appendChild(cell);
    }
    for (let n = 0; n < states.length; n++) {
      const cell = root.children[n];
      const css = "s-" + states[n] + (disabled.has(n) ? " off" : "");
      if (cell.className !== css) { cell.className = css; }
      const title = ids[n] || "";
      if (cell.title !== title) { cell.title = title; }
    }
    root.dataset.count = String(states.length);
    root.dataset.states = states;
    for (const count of document.querySelectorAll("#heat-legend .count")) {
      count.textContent = String((answer.counts || {})[count.dataset.state] || 0);
    }
    const set = (id, value) => { const el = document.getElementById(id); if (el && value !== undefined) { el.textContent = String(value); } };
    set("alloc-state", answer.allocationState);
    if (answer.current) { set("current-dedicated", answer.current[0]); set("current-spot", answer.current[1]); }
    if (answer.targets) { set("target-dedicated", answer.targets[0]); set("target-spot", answer.targets[1]); }
  }

  draw(data);
  async function poll() {
    try { draw(await getJson(root.dataset.poll + "?known=" + encodeURIComponent(digest))); }
    catch (error) { root.dataset.error = String(error); }
    setTimeout(poll, POLL_MS);
  }
  // The page carries no ids (a poll brings them): the first poll goes at once.
  if (ids.length === data.states.length) { setTimeout(poll, POLL_MS); } else { poll(); }
}

// ---- file tail: poll byte ranges of a node's file ----
function tail(root) {
  const text = root.querySelector(".tail-text");
  const status = root.querySelector(".tail-status");
  let offset = -1;
  async function poll() {
    let more = false;
    try {
      const answer = await getJson(root.dataset.tail + "?file=" + encodeURIComponent(root.dataset.file) + "&offset=" + offset);
      if (answer.data) {
        text.textContent = (text.textContent + answer.data).slice(-MAX_TAIL_CHARS);
        text.scrollTop = text.scrollHeight;
      }
      more = answer.size !== null && answer.size !== undefined && answer.offset < answer.size;
      offset = answer.offset;
      status.textContent = answer.missing ? answer.missing : (offset + " bytes");
      if (answer.taskState) {
        const state = document.getElementById("task-state");
        const ended = answer.taskState === "completed" && state && state.textContent !== "completed";
        if (state && state.textContent !== answer.taskState) { state.textContent = answer.taskState; }
        // A completed task writes no more: the viewer stops once it has read everything, and the
        // page is drawn again once, for the execution info of the end (exit code, end time).
        if (answer.taskState === "completed") { delete root.dataset.live; }
        if (ended) { setTimeout(() => window.location.reload(), 300); }
      }
    } catch (error) {
      status.textContent = String(error.message || error);
    }
    if (root.dataset.live || more) { setTimeout(poll, more ? 0 : TAIL_MS); }
  }
  poll();
}

// ---- a node's files ----
async function nodeFiles(root) {
  try {
    const answer = await getJson(root.dataset.files);
    root.textContent = "";
    if (answer.error) { root.textContent = answer.error; return; }
    const list = document.createElement("ul");
    for (const entry of answer.entries) {
      const item = document.createElement("li");
      item.textContent = entry.name + (entry.isDirectory ? "/" : " (" + entry.size + " bytes)");
      list.appendChild(item);
    }
    root.appendChild(list);
    if (answer.more) { const more = document.createElement("p"); more.textContent = "… and more"; root.appendChild(more); }
  } catch (error) {
    root.textContent = String(error.message || error);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const heat = document.getElementById("heatmap");
  if (heat) { heatMap(heat); }
  for (const root of document.querySelectorAll(".tail[data-tail]")) { tail(root); }
  const files = document.getElementById("node-files");
  if (files) { nodeFiles(files); }
});
