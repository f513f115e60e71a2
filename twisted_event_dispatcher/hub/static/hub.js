// The event hub's demo page: one WebSocket, subscriptions that survive reconnects (each
// resumes after the last offset it saw), and a form that POSTs to /events.
"use strict";

const $ = (id) => document.getElementById(id);
const subscriptions = new Map();  // event name -> {since: last id seen or null}
let socket = null;
let epoch = null;
let retry = 500;
let reconnects = 0;

function wsUrl() {
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  const token = $("token").value;
  if (token) url.searchParams.set("token", token);
  return url.toString();
}

function setStatus(state, text) {
  const status = $("status");
  status.className = "status " + state;
  status.dataset.state = state;
  $("status-text").textContent = text;
}

function connect() {
  setStatus("connecting", reconnects ? "reconnecting…" : "connecting…");
  socket = new WebSocket(wsUrl());
  socket.onopen = () => {
    retry = 500;
    setStatus("open", reconnects ? `connected (reconnect #${reconnects})` : "connected");
    if (reconnects) notice(`reconnected: resuming ${subscriptions.size} subscription(s)`);
    // With "*", only "*" resumes: a named resume would replay what "*" replays (the hub
    // refuses that overlap); the named subscriptions come back live.
    const wildcard = subscriptions.has("*");
    for (const [event, state] of subscriptions) {
      send(subscribeRequest(event, wildcard && event !== "*" ? {since: null} : state));
    }
  };
  socket.onmessage = (e) => handle(JSON.parse(e.data));
  socket.onclose = (e) => {
    setStatus("closed", `disconnected (${e.code}${e.reason ? ": " + e.reason : ""})`);
    reconnects += 1;
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 10000);
  };
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

function subscribeRequest(event, state) {
  const request = {type: "subscribe", event};
  if (state.since !== null && epoch) Object.assign(request, {since: state.since, epoch});
  return request;
}

function handle(message) {
  switch (message.type) {
    case "event": {
      for (const [event, state] of subscriptions) {
        if (event === "*" || event === message.event) state.since = message.id;
      }
      epoch = message.epoch;
      $("last-id").textContent = message.id;
      row([time(), message.id, message.event, JSON.stringify(message.data, null, 1)]);
      break;
    }
    case "subscribed": {
      epoch = epoch || message.epoch;
      $("channel").textContent = message.channel;
      $("epoch").textContent = message.epoch;
      $("last-id").textContent = message.last_id ?? "–";
      const state = subscriptions.get(message.event);
      if (state && state.since === null) state.since = message.last_id ?? 0;
      if (message.replayed) notice(`resumed '${message.event}': ${message.replayed} missed event(s) replayed`);
      renderSubscriptions();
      break;
    }
    case "gap":
      notice(`gap in '${message.event}' after id ${message.since} (${message.reason}): some events are gone, reload your state`, "gap");
      epoch = message.epoch;
      break;
    case "dropped":
      notice(`${message.count} event(s) dropped: this page was reading too slowly`, "gap");
      break;
    case "error":
      notice(`error: ${message.reason}`, "gap");
      break;
  }
}

function time() {
  return new Date().toLocaleTimeString([], {hour12: false}) + "." +
    String(new Date().getMilliseconds()).padStart(3, "0");
}

function row(cells, kind) {
  const tr = document.createElement("tr");
  tr.className = kind ? `notice ${kind}` : "fresh";
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (i === 3) td.className = "data";
    tr.appendChild(td);
  });
  if (kind) { tr.firstChild.nextSibling.colSpan = 3; tr.removeChild(tr.lastChild); tr.removeChild(tr.lastChild); }
  $("log-body").prepend(tr);
  $("empty").hidden = true;
}

function notice(text, kind = "info") { row([time(), text, "", ""], kind); }

function renderSubscriptions() {
  const list = $("subscriptions");
  list.replaceChildren();
  for (const event of subscriptions.keys()) {
    const li = document.createElement("li");
    li.dataset.event = event;
    li.append(event === "*" ? "* (everything)" : event);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.title = `unsubscribe from ${event}`;
    remove.textContent = "×";
    remove.onclick = () => {
      subscriptions.delete(event);
      send({type: "unsubscribe", event});
      renderSubscriptions();
    };
    li.appendChild(remove);
    list.appendChild(li);
  }
}

$("subscribe-form").onsubmit = (e) => {
  e.preventDefault();
  const event = $("subscribe-event").value.trim();
  if (!event || subscriptions.has(event)) return;
  subscriptions.set(event, {since: null});
  send(subscribeRequest(event, {since: null}));
  renderSubscriptions();
};

$("fire-form").onsubmit = async (e) => {
  e.preventDefault();
  const output = $("fire-result");
  let body;
  try {
    body = {
      event: $("fire-event").value.trim(),
      data: JSON.parse($("fire-data").value || "null"),
      keywords: JSON.parse($("fire-keywords").value || "{}"),
    };
  } catch (error) {
    output.className = "error";
    output.textContent = `not valid JSON: ${error.message}`;
    return;
  }
  const headers = {"content-type": "application/json"};
  if ($("token").value) headers.authorization = `Bearer ${$("token").value}`;
  const response = await fetch("events", {method: "POST", headers, body: JSON.stringify(body)});
  const answer = await response.json();
  output.className = response.ok ? "ok" : "error";
  output.textContent = response.ok ? `fired: id ${answer.id}` : `${response.status}: ${answer.error}`;
};

$("clear").onclick = () => { $("log-body").replaceChildren(); $("empty").hidden = false; };
$("reconnect").onclick = () => { if (socket) socket.close(); };
for (const el of document.querySelectorAll(".origin")) el.textContent = location.origin;

connect();
