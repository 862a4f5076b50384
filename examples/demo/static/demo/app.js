"use strict";

// Forms enqueue through fetch so the page (and its live list) stays in place.
const feedUrl = document.currentScript.dataset.feed;
const rows = document.getElementById("task-rows");
const flash = document.getElementById("flash");
const feedState = document.getElementById("feed-state");
const POLL_MS = 1000;

function showFlash(text, { taskId = "", error = false } = {}) {
  flash.textContent = text;
  flash.dataset.taskId = taskId;
  flash.classList.toggle("error", error);
}

async function submit(form) {
  let body;
  try {
    const response = await fetch(form.action, { method: "POST", body: new FormData(form) });
    body = await response.json();
    if (!response.ok) {
      showFlash(body.error, { error: true });
      return;
    }
  } catch (error) {
    showFlash(`Could not enqueue: ${error.message}`, { error: true });
    return;
  }
  const when = body.run_after ? `, to run at ${new Date(body.run_after).toLocaleTimeString()}` : "";
  showFlash(`Enqueued ${body.task} on queue ${body.queue}${when} (id ${body.id}).`, {
    taskId: body.id,
  });
  refresh();
}

function cell(className, content) {
  const td = document.createElement("td");
  td.className = className;
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  return td;
}

function describeResult(task) {
  if (task.status === "SUCCESSFUL") {
    const value = task.return_value;
    return typeof value === "string" ? value : JSON.stringify(value);
  }
  return task.error ?? "";
}

function row(task) {
  const tr = document.createElement("tr");
  tr.dataset.taskId = task.id;
  tr.dataset.status = task.status;
  tr.dataset.attempts = task.attempts;
  const badge = document.createElement("span");
  badge.className = `badge ${task.status}`;
  badge.textContent = task.status;
  const result = cell("result", describeResult(task));
  result.classList.toggle("error", task.status !== "SUCCESSFUL" && Boolean(task.error));
  const enqueued = task.enqueued_at ? new Date(task.enqueued_at).toLocaleTimeString() : "";
  tr.append(
    cell("task", task.task),
    cell("queue", task.priority ? `${task.queue} (priority ${task.priority})` : task.queue),
    cell("status", badge),
    cell("attempts", String(task.attempts)),
    result,
    cell("enqueued", enqueued),
  );
  return tr;
}

function emptyRow() {
  const tr = document.createElement("tr");
  const td = cell("empty", "No tasks yet: press a button above.");
  td.colSpan = 6;
  tr.append(td);
  return tr;
}

async function refresh() {
  try {
    const response = await fetch(feedUrl, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const { tasks } = await response.json();
    rows.replaceChildren(...(tasks.length ? tasks.map(row) : [emptyRow()]));
    feedState.textContent = `(live, ${new Date().toLocaleTimeString()})`;
  } catch (error) {
    feedState.textContent = `(not updating: ${error.message})`;
  }
}

// Chained timeouts rather than setInterval: a slow answer never stacks requests up.
async function poll() {
  await refresh();
  setTimeout(poll, POLL_MS);
}

for (const form of document.querySelectorAll("form[data-kind]")) {
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit(form);
  });
}
poll();
