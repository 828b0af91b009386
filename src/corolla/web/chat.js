// corolla chat page: talks to the OpenAI-compatible endpoint of the same origin.
// Conversations and settings live in localStorage; replies stream over SSE read with fetch.
"use strict";

const STORE_KEY = "corolla.conversations.v1";
const SETTINGS_KEY = "corolla.settings.v1";
const DEFAULT_SETTINGS = { model: "", temperature: 0.7, top_p: 0.95, max_tokens: 512, seed: "", system_prompt: "" };

const $ = (id) => document.getElementById(id);
const els = {
  messages: $("messages"), input: $("input"), send: $("send"), stop: $("stop"), status: $("status"),
  composer: $("composer"), list: $("conversations"), newChat: $("new-chat"), model: $("model"),
};

// ---------- storage ----------
function load(key, fallback) {
  try { const v = JSON.parse(localStorage.getItem(key)); return v ?? fallback; } catch { return fallback; }
}
function save(key, value) {
  try { localStorage.setItem(key, JSON.stringify(value)); } catch (e) { setStatus("could not save: " + e.message); }
}

const state = {
  conversations: load(STORE_KEY, { items: [], current: null }),
  settings: { ...DEFAULT_SETTINGS, ...load(SETTINGS_KEY, {}) },
  controller: null,      // AbortController of the request in flight
  streamingId: null,     // id of the conversation receiving the stream
};
if (!Array.isArray(state.conversations.items)) state.conversations = { items: [], current: null };

const persist = () => save(STORE_KEY, state.conversations);
const current = () => state.conversations.items.find((c) => c.id === state.conversations.current) || null;
const newId = () => Date.now().toString(36) + Math.random().toString(36).slice(2, 8);

function newConversation() {
  const conv = { id: newId(), title: "New chat", messages: [], created: Date.now() };
  state.conversations.items.unshift(conv);
  state.conversations.current = conv.id;
  persist();
  return conv;
}

// ---------- markdown ----------
const escapeHtml = (s) => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
// Raw HTML in model output is shown as text, never interpreted; DOMPurify then cleans what marked
// produced (links with javascript: URLs and the like).
marked.use({ gfm: true, breaks: false, renderer: { html(token) { return escapeHtml(token.text ?? token.raw ?? ""); } } });

function renderMarkdown(target, text) {
  const html = DOMPurify.sanitize(marked.parse(text || ""), { USE_PROFILE: { html: true } });
  target.innerHTML = html;
  target.querySelectorAll("pre code").forEach((code) => {
    try { hljs.highlightElement(code); } catch { /* unknown language: leave plain */ }
    const pre = code.parentElement;
    const btn = document.createElement("button");
    btn.type = "button"; btn.className = "copy"; btn.textContent = "copy";
    btn.addEventListener("click", () => {
      navigator.clipboard?.writeText(code.textContent).then(() => { btn.textContent = "copied"; setTimeout(() => (btn.textContent = "copy"), 1200); });
    });
    pre.appendChild(btn);
  });
  target.querySelectorAll("a[href]").forEach((a) => { a.target = "_blank"; a.rel = "noopener noreferrer"; });
}

// ---------- rendering ----------
function setStatus(text) { els.status.textContent = text || ""; }

function renderList() {
  els.list.replaceChildren();
  for (const conv of state.conversations.items) {
    const li = document.createElement("li");
    li.dataset.testid = "conversation";
    li.dataset.id = conv.id;
    if (conv.id === state.conversations.current) li.classList.add("active");
    const title = document.createElement("span");
    title.className = "title"; title.textContent = conv.title || "New chat"; title.title = conv.title || "";
    title.addEventListener("click", () => switchTo(conv.id));
    const del = document.createElement("button");
    del.type = "button"; del.textContent = "✕"; del.title = "Delete conversation";
    del.dataset.testid = "delete-conversation";
    del.addEventListener("click", (e) => { e.stopPropagation(); deleteConversation(conv.id); });
    li.append(title, del);
    els.list.appendChild(li);
  }
}

function messageElement(msg, index) {
  const div = document.createElement("div");
  div.className = `message ${msg.role}` + (msg.error ? " error" : "");
  div.dataset.testid = "message";
  div.dataset.role = msg.role;
  div.dataset.index = index;
  const role = document.createElement("div");
  role.className = "role"; role.textContent = msg.role === "user" ? "you" : "assistant";
  const content = document.createElement("div");
  content.className = "content"; content.dataset.testid = "message-content";
  if (msg.role === "user" || msg.error) content.textContent = msg.content;
  else renderMarkdown(content, msg.content);
  div.append(role, content);
  if (msg.note) {
    const note = document.createElement("div");
    note.className = "note"; note.textContent = msg.note;
    div.appendChild(note);
  }
  return div;
}

function renderMessages() {
  const conv = current();
  els.messages.replaceChildren();
  if (!conv || conv.messages.length === 0) {
    const empty = document.createElement("div");
    empty.className = "empty"; empty.textContent = "Ask the swarm anything.";
    els.messages.appendChild(empty);
    return;
  }
  conv.messages.forEach((m, i) => {
    const el = messageElement(m, i);
    if (state.streamingId === conv.id && i === conv.messages.length - 1 && m.role === "assistant") el.classList.add("streaming");
    els.messages.appendChild(el);
  });
  scrollToEnd(true);
}

function scrollToEnd(force) {
  const m = els.messages;
  if (force || m.scrollHeight - m.scrollTop - m.clientHeight < 80) m.scrollTop = m.scrollHeight;
}

function updateButtons() {
  const busy = state.controller !== null;
  els.send.disabled = busy;
  els.stop.disabled = !busy;
}

function render() { renderList(); renderMessages(); updateButtons(); }

function switchTo(id) { state.conversations.current = id; persist(); render(); }

function deleteConversation(id) {
  if (state.streamingId === id) stop();
  const items = state.conversations.items;
  const i = items.findIndex((c) => c.id === id);
  if (i >= 0) items.splice(i, 1);
  if (state.conversations.current === id) state.conversations.current = items[0]?.id ?? null;
  persist(); render();
}

// ---------- settings ----------
const SETTING_FIELDS = ["temperature", "top_p", "max_tokens", "seed", "system_prompt", "model"];
function bindSettings() {
  for (const name of SETTING_FIELDS) {
    const el = $(name);
    if (name !== "model") el.value = state.settings[name];
    const update = () => { state.settings[name] = el.value; save(SETTINGS_KEY, state.settings); };
    el.addEventListener("input", update);
    el.addEventListener("change", update);
  }
}

async function loadModels() {
  try {
    const r = await fetch("v1/models");
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const ids = ((await r.json()).data || []).map((m) => m.id);
    els.model.replaceChildren(...ids.map((id) => { const o = document.createElement("option"); o.value = o.textContent = id; return o; }));
    if (ids.includes(state.settings.model)) els.model.value = state.settings.model;
    else state.settings.model = ids[0] || "";
  } catch (e) {
    setStatus("could not list models: " + e.message);
  }
}

function num(value, fallback, parse = parseFloat) {
  const v = parse(value);
  return Number.isFinite(v) ? v : fallback;
}

function requestBody(conv) {
  const s = state.settings;
  const messages = [];
  if ((s.system_prompt || "").trim()) messages.push({ role: "system", content: s.system_prompt });
  for (const m of conv.messages) if (!m.error && m.content) messages.push({ role: m.role, content: m.content });
  const body = {
    model: els.model.value || s.model || undefined, messages, stream: true,
    temperature: num(s.temperature, DEFAULT_SETTINGS.temperature),
    top_p: num(s.top_p, DEFAULT_SETTINGS.top_p),
    max_tokens: num(s.max_tokens, DEFAULT_SETTINGS.max_tokens, (x) => parseInt(x, 10)),
  };
  const seed = parseInt(s.seed, 10);
  if (Number.isFinite(seed)) body.seed = seed;
  return body;
}

// ---------- streaming ----------
// Reads an SSE body; calls onData(payload string) for each event's data. Resolves at [DONE] or EOF.
async function readSSE(response, onData) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", data = [];
  const dispatch = () => {
    if (data.length === 0) return false;
    const payload = data.join("\n"); data = [];
    if (payload.trim() === "[DONE]") return true;
    onData(payload);
    return false;
  };
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let nl;
    while ((nl = buffer.search(/\r\n|\n|\r/)) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + (buffer.startsWith("\r\n", nl) ? 2 : 1));
      if (line === "") { if (dispatch()) { reader.cancel().catch(() => {}); return; } continue; }
      if (line.startsWith(":")) continue;                       // comment / keep-alive
      if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (done) { if (buffer.startsWith("data:")) data.push(buffer.slice(5).replace(/^ /, "")); dispatch(); return; }
  }
}

async function errorText(response) {
  try {
    const j = await response.json();
    return j?.error?.message || j?.detail?.toString?.() || JSON.stringify(j);
  } catch { return response.statusText; }
}

async function send(text) {
  if (state.controller) return;
  let conv = current() || newConversation();
  conv.messages.push({ role: "user", content: text });
  if (conv.title === "New chat") conv.title = text.replace(/\s+/g, " ").slice(0, 48);
  const reply = { role: "assistant", content: "" };
  conv.messages.push(reply);
  persist();

  const controller = new AbortController();
  state.controller = controller; state.streamingId = conv.id;
  render();
  setStatus("waiting for the swarm…");
  const started = performance.now();
  let tokens = 0, firstAt = null, finish = null, frame = 0;

  const paint = () => {
    frame = 0;
    if (state.conversations.current !== conv.id) return;
    const last = els.messages.lastElementChild;
    const content = last?.querySelector(".content");
    if (content) { renderMarkdown(content, reply.content); scrollToEnd(false); }
  };

  try {
    const body = requestBody({ messages: conv.messages.slice(0, -1) });
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) throw new Error(`HTTP ${response.status}: ${await errorText(response)}`);
    await readSSE(response, (payload) => {
      let chunk;
      try { chunk = JSON.parse(payload); } catch { return; }
      if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
      const choice = chunk.choices?.[0];
      if (!choice) return;
      const piece = choice.delta?.content ?? choice.text ?? "";
      if (piece) {
        if (firstAt === null) firstAt = performance.now();
        tokens += 1;
        reply.content += piece;
        if (!frame) frame = requestAnimationFrame(paint);
        setStatus(`streaming… ${tokens} chunks`);
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    });
    const secs = (performance.now() - (firstAt ?? started)) / 1000;
    reply.note = `${tokens} chunks` + (secs > 0 && tokens > 1 ? `, ${(tokens / secs).toFixed(1)}/s` : "") +
      (finish === "length" ? " · stopped at max tokens" : "");
    setStatus("");
  } catch (e) {
    if (e.name === "AbortError") {
      reply.note = "stopped";
      setStatus("stopped");
    } else {
      controller.abort(); // drop the connection if the error came from inside the stream
      if (!reply.content) { reply.content = String(e.message || e); reply.error = true; }
      else reply.note = "error: " + (e.message || e);
      setStatus("error: " + (e.message || e));
    }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    if (!reply.content && !reply.error) reply.note = reply.note || "(empty reply)";
    state.controller = null; state.streamingId = null;
    persist();
    render();
  }
}

function stop() { if (state.controller) state.controller.abort(); }

// ---------- events ----------
els.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = els.input.value.trim();
  if (!text || state.controller) return;
  els.input.value = ""; autosize();
  send(text);
});
els.input.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); els.composer.requestSubmit(); }
});
function autosize() { els.input.style.height = "auto"; els.input.style.height = Math.min(els.input.scrollHeight + 2, window.innerHeight * 0.4) + "px"; }
els.input.addEventListener("input", autosize);
els.stop.addEventListener("click", stop);
els.newChat.addEventListener("click", () => {
  const cur = current();
  if (!cur || cur.messages.length > 0) newConversation(); // no pile of empty chats
  render(); els.input.focus();
});

bindSettings();
render();
loadModels();
els.input.focus();
