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

const time = (iso) => new Date(iso).toLocaleTimeString();

// What the queue will still do: the next attempt of a failing task, the scheduled time of a
// delayed one, or that it gave up.
function describeAttempts(task) {
  const outOf = task.max_attempts && task.attempts > 0;
  const count = outOf ? `${task.attempts} of ${task.max_attempts}` : `${task.attempts}`;
  switch (task.state) {
    case "RETRYING":
      return `${count} failed, next at ${time(task.next_attempt_at)}`;
    case "READY":
      return task.next_attempt_at && new Date(task.next_attempt_at) > Date.now()
        ? `${count}, scheduled for ${time(task.next_attempt_at)}`
        : count;
    case "FAILED":
      return `${count}, gave up`;
    case "LOST":
      return `${count}, no longer queued (emulator restarted)`;
    default:
      return count;
  }
}

function row(task) {
  const tr = document.createElement("tr");
  tr.dataset.taskId = task.id;
  tr.dataset.status = task.status;
  tr.dataset.state = task.state;
  tr.dataset.attempts = task.attempts;
  const badge = document.createElement("span");
  badge.className = `badge ${task.state}`;
  badge.textContent = task.state;
  const result = cell("result", describeResult(task));
  result.classList.toggle("error", task.status !== "SUCCESSFUL" && Boolean(task.error));
  const enqueued = task.enqueued_at ? time(task.enqueued_at) : "";
  tr.append(
    cell("task", task.task),
    cell("queue", task.priority ? `${task.queue} (priority ${task.priority})` : task.queue),
    cell("status", badge),
    cell("attempts", describeAttempts(task)),
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
