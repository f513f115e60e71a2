// The event hub's demo page: one WebSocket, subscriptions that survive reconnects (each
// resumes after the last offset it saw), and a form that POSTs to /events.
// Event data comes from whoever may POST: it is only ever put in the page as text
// (textContent, text nodes), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
// event name -> {since: last id seen or null, subscribed: the hub confirmed it on this socket}
const subscriptions = new Map();
let socket = null;
let epoch = null;
let retry = 500;
let reconnects = 0;
let headerSet = false;  // the header shows a frame's channel/epoch/last id (not /health's)
const MAX_LOG_ROWS = 500;
const SMALL_JSON = 40;  // characters: data this short is shown on one line, longer folded

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
    resumeListening();
  };
  socket.onmessage = (e) => handle(JSON.parse(e.data));
  socket.onclose = (e) => {
    connectionLost();
    setStatus("closed", `disconnected (${e.code}${e.reason ? ": " + e.reason : ""})`);
    reconnects += 1;
    setTimeout(connect, retry);
    retry = Math.min(retry * 2, 10000);
  };
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

// The channel, its epoch and its last id in the header (null: nothing published yet).
function showChannel(channel, epochText, lastId) {
  $("channel").textContent = channel;
  $("epoch").textContent = epochText;
  $("last-id").textContent = lastId ?? "none yet";
}

// Before the first frame (or if the WebSocket cannot connect, e.g. for want of a token):
// the header from /health, which answers without a token.
async function loadHealth() {
  try {
    const response = await fetch("health", {cache: "no-store"});
    const health = await response.json();
    if (!headerSet && health.channel) {
      showChannel(health.channel.name, health.channel.epoch, health.channel.last_id);
    }
  } catch (error) {
    // the WebSocket's status says what is wrong; its first frame fills the header
  }
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
      row([time(), String(message.id), message.event, dataView(message.data)]);
      break;
    }
    case "subscribed": {
      epoch = epoch || message.epoch;
      headerSet = true;
      showChannel(message.channel, message.epoch, message.last_id);
      const state = subscriptions.get(message.event);
      if (state && state.since === null) state.since = message.last_id ?? 0;
      if (state) state.subscribed = true;
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
    case "result":
      answered(message);
      break;
    case "mail":
      showMail(message);
      break;
    case "listen_end":
      listenEnded(message);
      break;
    case "error":
      if (!answered(message)) notice(`error: ${message.reason}`, "gap");
      break;
  }
}

function time() {
  return new Date().toLocaleTimeString([], {hour12: false}) + "." +
    String(new Date().getMilliseconds()).padStart(3, "0");
}

// A JSON value's one-line form, spaced like Python's json.dumps: {"a": 1, "b": [2, 3]}.
// (JSON.stringify escapes line breaks inside strings: each one left is indentation.)
function oneLine(value) {
  const text = JSON.stringify(value, null, 1);
  if (text === undefined) return "null";
  return text.replace(/([[{])\n */g, "$1").replace(/\n *([\]}])/g, "$1")
    .replace(/\n */g, " ");
}

// How big a folded value is, for its summary: "12 keys", "40 items", "3000 characters".
function sizeOf(value, text) {
  if (Array.isArray(value)) return `${value.length} items, ${text.length} chars`;
  if (value && typeof value === "object") {
    return `${Object.keys(value).length} keys, ${text.length} chars`;
  }
  return `${text.length} chars`;
}

// Data as a node: a small value as one line of code; a big one as a <details> whose
// summary is its beginning (and size) and whose body is the whole value, indented.
function dataView(value) {
  const text = oneLine(value);
  if (text.length <= SMALL_JSON) {
    const code = document.createElement("code");
    code.className = "json";
    code.textContent = text;
    return code;
  }
  const details = document.createElement("details");
  details.className = "json";
  const summary = document.createElement("summary");
  let start = text.slice(0, 160);
  if (/[\uD800-\uDBFF]$/.test(start)) start = start.slice(0, -1);  // not half a pair
  const size = document.createElement("span");
  size.className = "size";
  size.textContent = `(${sizeOf(value, text)})`;
  const preview = document.createElement("code");
  preview.textContent = start;
  summary.append(size, preview);
  const pre = document.createElement("pre");
  pre.textContent = JSON.stringify(value, null, 2);
  details.append(summary, pre);
  return details;
}

// A row of the events log: each cell a string (as text) or a node built by dataView.
function row(cells, kind) {
  const tr = document.createElement("tr");
  tr.className = kind ? `notice ${kind}` : "fresh";
  cells.forEach((content, i) => {
    const td = document.createElement("td");
    td.append(content);
    if (i === 3) td.className = "data";
    tr.appendChild(td);
  });
  if (kind) { tr.firstChild.nextSibling.colSpan = 3; tr.removeChild(tr.lastChild); tr.removeChild(tr.lastChild); }
  const body = $("log-body");
  body.prepend(tr);
  while (body.rows.length > MAX_LOG_ROWS) body.lastElementChild.remove();
  $("empty").hidden = true;
}

function notice(text, kind = "info") { row([time(), text, "", ""], kind); }

function renderSubscriptions() {
  const list = $("subscriptions");
  list.replaceChildren();
  for (const [event, state] of subscriptions) {
    const li = document.createElement("li");
    li.dataset.event = event;
    li.dataset.state = state.subscribed ? "subscribed" : "pending";
    li.title = state.subscribed ? "subscribed" : "waiting for the hub to confirm";
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

function subscribe(event) {
  if (!event || subscriptions.has(event)) return;
  subscriptions.set(event, {since: null, subscribed: false});
  send(subscribeRequest(event, {since: null}));  // (before the socket opens: onopen sends it)
  renderSubscriptions();
}

$("subscribe-form").onsubmit = (e) => {
  e.preventDefault();
  subscribe($("subscribe-event").value.trim());
  $("subscribe-event").value = "";
};

// A refused keyword: say that the hub accepts only those it was started with, and which.
function keywordHint(allowed) {
  const hint = $("keyword-hint");
  const option = document.createElement("code");
  option.textContent = "--keyword NAME";
  if (allowed.length) {
    const names = document.createElement("code");
    names.textContent = allowed.join(", ");
    hint.replaceChildren("This hub accepts only the keywords it was started with (",
      option, ", once for each): ", names, ".");
  } else {
    hint.replaceChildren("This hub was started without keywords, so it accepts none: leave ",
      "Keywords as {}, or restart it with ", option, " (once for each keyword).");
  }
  hint.hidden = false;
}

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
  let response, answer;
  try {
    response = await fetch("events", {method: "POST", headers, body: JSON.stringify(body)});
    answer = await response.json();
  } catch (error) {
    say(output, `no answer from the hub: ${error.message}`, false);
    return;
  }
  output.className = response.ok ? "ok" : "error";
  output.textContent = response.ok ? `fired: id ${answer.id}` : `${response.status}: ${answer.error}`;
  // (the hub lists its keywords with an unknown-keyword refusal)
  if (Array.isArray(answer.allowed_keywords)) keywordHint(answer.allowed_keywords);
  else $("keyword-hint").hidden = true;
};

// -- Listeners panel: the control plane's request types, on the same WebSocket ------------
// Each request carries a "ref" that the hub echoes in its "result" or "error" frame, so an
// answer is shown next to the form, listener or mail that asked.
const listeners = new Map();   // listener id -> {id, li, button, output, state, autoAck}
const pending = new Map();     // ref -> {output, done(result), failed(error frame | null)}
const lastOutput = new Map();  // request type -> output, for an error frame without a ref
const mailRows = new Map();    // [channel, listener, mail id] as JSON -> its mailbox row
const MAX_MAIL_ROWS = 200;
let nextRef = 1;

function say(output, text, ok) {
  output.className = ok ? "ok" : "error";
  output.textContent = text;
}

function smallButton(text, title) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "small";
  button.textContent = text;
  button.title = title;
  return button;
}

function control(message, output, done, failed = () => {}) {
  lastOutput.set(message.type, output);
  if (!socket || socket.readyState !== WebSocket.OPEN) {
    say(output, "not connected: try again once the page has reconnected", false);
    failed({});
    return;
  }
  const ref = `ui-${nextRef++}`;
  pending.set(ref, {output, done, failed});
  socket.send(JSON.stringify({...message, ref}));
}

// A "result" or "error" frame, to the request that carried its ref. False: not the panel's.
function answered(message) {
  const entry = message.ref === undefined ? undefined : pending.get(message.ref);
  pending.delete(message.ref);
  if (message.type === "result") {
    if (entry) entry.done(message);
    return true;
  }
  const output = entry ? entry.output : lastOutput.get(message.request);
  if (!output) return false;
  say(output, `${message.code || "error"}: ${message.reason}`, false);
  if (entry) entry.failed(message);
  return true;
}

function connectionLost() {
  for (const state of subscriptions.values()) state.subscribed = false;
  renderSubscriptions();
  for (const {output, failed} of pending.values()) {
    say(output, "connection lost before the answer: it may or may not have been done", false);
    failed(null);
  }
  pending.clear();
  // Their streams reopen on the next connection; unacknowledged mail comes again.
  for (const entry of listeners.values()) {
    if (entry.state !== "idle") setListenState(entry, "resuming");
  }
}

function resumeListening() {
  for (const entry of listeners.values()) if (entry.state === "resuming") listen(entry);
}

function setListenState(entry, state) {
  entry.state = state;
  entry.li.dataset.state = state;
  entry.button.textContent = state === "idle" ? "listen" : "stop";
}

function listen(entry) {
  setListenState(entry, "opening");
  control({type: "listen", listener: entry.id, auto_ack: entry.autoAck}, entry.output, () => {
    setListenState(entry, "listening");
    say(entry.output, entry.autoAck ? "listening (auto-ack)" : "listening", true);
  }, (error) => { if (error) setListenState(entry, "idle"); });
}

function unlisten(entry) {
  if (entry.state === "resuming") {
    setListenState(entry, "idle");
    return;
  }
  control({type: "unlisten", listener: entry.id}, entry.output, () => {
    setListenState(entry, "idle");
    say(entry.output, "stopped", true);
  });
}

function listenEnded(message) {
  const entry = listeners.get(message.listener);
  if (!entry) return;
  setListenState(entry, "idle");
  say(entry.output, `stream ended: ${message.reason}`, false);
}

function addListener(id, group) {
  if (listeners.has(id)) return;
  const li = document.createElement("li");
  li.dataset.listener = id;
  const name = document.createElement("code");
  name.textContent = id;
  const groupName = document.createElement("span");
  groupName.className = "hint";
  groupName.textContent = group ? `group ${group}` : "";
  const button = smallButton("listen", `open (or stop) the mailbox stream of ${id}`);
  const remove = smallButton("remove", `remove listener ${id} from the channel`);
  const output = document.createElement("output");
  li.append(name, groupName, button, remove, output);
  const entry = {id, li, button, output, state: "idle", autoAck: false};
  button.onclick = () => {
    if (entry.state !== "idle") return unlisten(entry);
    entry.autoAck = $("auto-ack").checked;
    listen(entry);
  };
  remove.onclick = () => control({type: "remove_listener", listener: id}, output, () => {
    listeners.delete(id);
    li.remove();
    for (const tr of mailRows.values()) {
      if (tr.dataset.listener === id && tr.lastChild.querySelector("button")) {
        tr.lastChild.replaceChildren("listener removed");
      }
    }
    say($("register-result"), `removed ${id}`, true);
  });
  listeners.set(id, entry);
  setListenState(entry, "idle");
  $("listeners").append(li);
}

// Acknowledge a mail (with "reply" or "error" for a request); the cell says how it ended.
function settle(mail, fields, cell, done, buttons, output) {
  for (const button of buttons) button.disabled = true;
  const request = {type: "ack", channel: mail.channel, listener: mail.listener, id: mail.id};
  control({...request, ...fields}, output, () => {
    cell.className = "acked";
    cell.replaceChildren(done);
  }, () => { for (const button of buttons) button.disabled = false; });
}

// A request is answered, never just acknowledged: a reply (JSON) or a failure.
function answerControls(mail, cell) {
  const input = document.createElement("input");
  input.className = "reply";
  input.placeholder = "reply (JSON)";
  input.setAttribute("aria-label", `reply to request ${mail.id} (JSON)`);
  const reply = smallButton("reply", `answer request ${mail.id} with the JSON value`);
  const failure = smallButton("fail", `fail request ${mail.id}: its requester gets an error`);
  const output = document.createElement("output");
  reply.onclick = () => {
    let value;
    try {
      value = JSON.parse(input.value || "null");
    } catch (error) {
      say(output, `not valid JSON: ${error.message}`, false);
      return;
    }
    settle(mail, {reply: value}, cell, "replied", [reply, failure], output);
  };
  failure.onclick = () => settle(mail, {error: "failed from the demo page"}, cell, "failed",
    [reply, failure], output);
  return [input, reply, failure, output];
}

function showMail(mail) {
  const key = JSON.stringify([mail.channel, mail.listener, mail.id]);
  const entry = listeners.get(mail.listener);
  const tr = document.createElement("tr");
  tr.className = "fresh";
  tr.dataset.listener = mail.listener;
  tr.dataset.id = mail.id;
  const source = mail.request ? `${mail.source} (request)` : mail.source;
  const cells = [time(), mail.listener, mail.id, mail.event, dataView(mail.data), source,
    mail.deliveries];
  cells.forEach((content, i) => {
    const td = document.createElement("td");
    td.append(typeof content === "object" ? content : String(content));
    if (i === 4) td.className = "data";
    tr.appendChild(td);
  });
  const cell = document.createElement("td");
  if (entry && entry.autoAck && !mail.request) {  // (a request waits for its reply)
    cell.textContent = "auto-acked";
    cell.className = "acked";
  } else if (mail.request) {
    cell.append(...answerControls(mail, cell));
  } else {
    const button = smallButton("ack", `acknowledge mail ${mail.id}: it will not come again`);
    const output = document.createElement("output");
    button.onclick = () => settle(mail, {}, cell, "acked", [button], output);
    cell.append(button, output);
  }
  tr.appendChild(cell);
  const old = mailRows.get(key);  // delivered again (a new stream): same row, updated
  if (old) old.replaceWith(tr);
  else $("mailbox-body").append(tr);
  mailRows.set(key, tr);
  for (const [oldest, row] of mailRows) {
    if (mailRows.size <= MAX_MAIL_ROWS) break;
    row.remove();
    mailRows.delete(oldest);
  }
  $("mailbox-empty").hidden = true;
}

$("register-form").onsubmit = (e) => {
  e.preventDefault();
  const output = $("register-result");
  const request = {type: "register"};
  const id = $("register-id").value.trim();
  const group = $("register-group").value.trim();
  if (id) request.listener = id;
  if (group) request.group = group;
  control(request, output, (answer) => {
    say(output, `registered ${answer.listener} on ${answer.channel}`, true);
    addListener(answer.listener, group);
    if (!$("dispatch-target").value) $("dispatch-target").value = answer.listener;
  });
};

$("dispatch-form").onsubmit = (e) => {
  e.preventDefault();
  const output = $("dispatch-result");
  let data;
  try {
    data = JSON.parse($("dispatch-data").value || "null");
  } catch (error) {
    say(output, `data is not valid JSON: ${error.message}`, false);
    return;
  }
  const target = $("dispatch-target").value.trim();
  const group = $("dispatch-kind").value === "group";
  const request = group ? {type: "dispatch_group", group: target}
    : {type: "dispatch", listener: target};
  Object.assign(request, {event: $("dispatch-event").value.trim(), data});
  control(request, output, (answer) => say(output, answer.id === null
    ? `${request.event} sent to ${target}` : `dispatched to ${target}: mail ${answer.id}`, true));
};

$("clear").onclick = () => { $("log-body").replaceChildren(); $("empty").hidden = false; };
$("reconnect").onclick = () => { if (socket) socket.close(); };
for (const el of document.querySelectorAll(".origin")) el.textContent = location.origin;

subscribe("*");  // everything, from the start: the box is left empty for more
loadHealth();
connect();
