// sock-chat in a browser: the same room as telnet, through a WebSocket (SPEC 9).
//
// How the page talks to the server:
// - It opens a WebSocket to /ws on the host that served it (wss: when the page is https:).
// - Every message is one line of the chat protocol, exactly what a telnet user sees, without
//   the "\r\n": "alice says: hi", "* bob joined (3 online)", "* error: slow down".
//   The page sends what you type as one text message; commands are lines too ("/nick ann").
// - Received text is only ever put into the page as text (textContent), never as HTML, so a
//   line like <img src=x onerror=alert(1)> shows as those characters.
// - The online list starts from one "/list" after joining (its answer, "* online (N): a, b",
//   is not shown), then follows the join, leave and rename notices; if the count in a notice
//   disagrees with the list, the page asks "/list" again. So it never polls the room.
// - When the connection drops, the page says so and reconnects, waiting 1 s, 2 s, 4 s... up
//   to 30 s between tries; a connection that got a welcome starts the wait at 1 s again.
"use strict";

const MAX_LINES = 1000; // lines kept on the page; older ones are removed
const RETRY_FIRST_MS = 1000;
const RETRY_MAX_MS = 30000;

const $ = (id) => document.getElementById(id);
const lines = $("lines"), input = $("input"), status = $("status");
const onlineList = $("online"), onlineCount = $("online-count"), nickInput = $("nick-input");

let socket = null;
let retryMs = RETRY_FIRST_MS;
let me = null;                 // our name in the room: our address until /nick
let online = [];               // names, in the order the server lists them
let listing = null;            // while our own /list's answer comes in: {expected, names}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}/ws`);
  setStatus("connecting…", false);
  socket.onopen = () => setStatus("connected", true);
  socket.onmessage = (event) => receive(String(event.data));
  socket.onclose = () => {
    socket = null;
    const seconds = Math.round(retryMs / 1000);
    setStatus(`disconnected, reconnecting in ${seconds} s…`, false);
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
  };
}

function setStatus(text, up) {
  status.textContent = me && up ? `${text} as ${me}` : text;
  status.className = up ? "up" : "down";
}

function send(text) {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(text);
    return true;
  }
  show("* error: not connected; the line was not sent", "error");
  return false;
}

// One line from the server: follow who is online, then show it.
function receive(line) {
  let match;
  if ((match = line.match(/^\* welcome (\S+), \d+ online/))) {
    me = match[1];
    retryMs = RETRY_FIRST_MS;
    setStatus("connected", true);
    online = [];
    listing = { expected: null, names: [] };
    send("/list");
  } else if ((match = line.match(/^\* online \((\d+)\): (.*)$/))) {
    const names = match[2].split(", ");
    if (listing) {
      listing.expected = Number(match[1]);
      listing.names.push(...names);
      if (listing.names.length >= listing.expected) {
        online = listing.names;
        listing = null;
        renderOnline();
      }
      return; // the page asked: not for the reader
    }
  } else if ((match = line.match(/^\* (\S+) joined \((\d+) online\)$/))) {
    online.push(match[1]);
    checkCount(Number(match[2]));
  } else if ((match = line.match(/^\* (\S+) left \((\d+) online\)/))) {
    online = online.filter((name) => name !== match[1]);
    checkCount(Number(match[2]));
  } else if ((match = line.match(/^\* (\S+) is now (\S+)$/))) {
    online = online.map((name) => (name === match[1] ? match[2] : name));
    if (match[1] === me) {
      me = match[2];
      setStatus("connected", true);
    }
  }
  renderOnline();
  show(line, kindOf(line));
}

// A notice's count disagrees with the list (a notice was missed): ask once more.
function checkCount(count) {
  if (count !== online.length && !listing) {
    listing = { expected: null, names: [] };
    send("/list");
  }
}

function kindOf(line) {
  if (line.startsWith("* error:")) return "error";
  if (line.startsWith("* ")) return "notice";
  if (/^\S+ \(private\): /.test(line)) return "private";
  return "chat";
}

function show(text, kind) {
  const stick = lines.scrollTop + lines.clientHeight >= lines.scrollHeight - 4;
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = text; // text, never HTML
  lines.append(item);
  while (lines.children.length > MAX_LINES) lines.firstElementChild.remove();
  if (stick) lines.scrollTop = lines.scrollHeight;
}

function renderOnline() {
  const items = online.map((name) => {
    const item = document.createElement("li");
    item.textContent = name;
    if (name === me) item.className = "me";
    return item;
  });
  onlineList.replaceChildren(...items);
  onlineCount.textContent = `(${online.length})`;
}

$("say").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value;
  if (text.trim() === "" || !send(text)) return;
  // The server does not send our own lines back: show them as the others see them.
  if (!text.startsWith("/") || text.startsWith("//")) {
    const said = text.startsWith("//") ? text.slice(1) : text;
    show(`${me} says: ${said}`, "own");
  }
  input.value = "";
  input.focus();
});

$("nick").addEventListener("submit", (event) => {
  event.preventDefault();
  const name = nickInput.value.trim();
  if (name !== "" && send(`/nick ${name}`)) nickInput.value = "";
  input.focus(); // typing goes back to the message box
});

connect();
