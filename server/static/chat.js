// The chat page's script. A file of its own, like chat.css: the page's Content-Security-Policy
// (server/guard.py) allows script and style only from the server's files, never inline.
"use strict";
(() => {
  const CONVERSATION_KEY = "mcp-backend.conversation_id";
  const MODEL_KEY = "mcp-backend.model";
  const TOKEN_KEY = "mcp-backend.token";  // sessionStorage: a secret should not outlive the tab
  const MAX_RECONNECT_DELAY_MS = 10000;
  const AUTH_CLOSE_CODES = new Set([1008, 4001, 4003, 4401, 4403]);
  // A full server (server.max_connections) accepts a socket and closes it at once with this,
  // having read nothing from it: what was sent on it goes again on the next socket, and the page
  // waits longer before each try (every tab of a restarted server reconnects at once).
  const TRY_AGAIN_LATER = 1013;

  const $ = (id) => document.getElementById(id);
  const input = $("input"), sendButton = $("send"), stopButton = $("stop");
  const messages = $("messages"), banner = $("banner"), connection = $("connection");
  const auth = $("auth"), tokenInput = $("token"), modelPicker = $("model");

  let socket = null;
  let opened = false;          // did the current socket ever open?
  let reconnectDelay = 500;
  let reconnectTimer = null;
  const outbox = [];           // frames written while the socket was not open
  let unanswered = [];         // frames sent on the current socket before it sent anything
  let current = null;          // the request in flight: {id, msg, body, toolCalls, segment}

  const storage = {
    get(store, key) { try { return store.getItem(key); } catch { return null; } },
    set(store, key, value) { try { store.setItem(key, value); } catch { /* private mode */ } },
    remove(store, key) { try { store.removeItem(key); } catch { /* private mode */ } },
  };

  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
    const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---------------------------------------------------------------- markdown

  // Answers are Markdown. Raw HTML in them is shown as text (the renderer escapes it) and the
  // rendered HTML is sanitized again by DOMPurify, so no markup from a model (or from a page
  // it quotes) can run script. Without the libraries (a missing static file) text stays plain.
  const markdownReady = typeof window.marked === "object" && typeof window.DOMPurify === "function";
  if (markdownReady) {
    const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => (
      { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
    window.marked.use({ gfm: true, breaks: false, renderer: { html: ({ text }) => escapeHtml(text) } });
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A" && node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    });
  }

  function renderMarkdown(target, source) {
    if (!markdownReady) { target.textContent = source; return; }
    const html = window.marked.parse(source, { async: false });
    target.innerHTML = window.DOMPurify.sanitize(html, { FORBID_TAGS: ["style", "form", "input"] });
  }

  // Streaming re-renders only the segment being written, at most once per animation frame:
  // the cost per frame is one parse of one segment, however many deltas arrived.
  const dirtySegments = new Set();
  let renderScheduled = false;

  function scheduleRender(segment) {
    dirtySegments.add(segment);
    if (renderScheduled) return;
    renderScheduled = true;
    requestAnimationFrame(flushRenders);
  }

  function flushRenders() {
    renderScheduled = false;
    const follow = nearBottom();
    for (const segment of dirtySegments) renderMarkdown(segment.node, segment.source);
    dirtySegments.clear();
    scrollIfFollowing(follow);
  }

  function nearBottom() {
    return messages.scrollHeight - messages.scrollTop - messages.clientHeight < 80;
  }

  function scrollIfFollowing(follow) {
    if (follow) messages.scrollTop = messages.scrollHeight;
  }

  function addMessage(role, text) {
    const msg = el("div", `msg ${role}`);
    const body = el("div", "body");
    if (text !== undefined) body.textContent = text;
    msg.appendChild(body);
    messages.appendChild(msg);
    messages.scrollTop = messages.scrollHeight;
    return { msg, body };
  }

  function setBusy(busy) {
    sendButton.disabled = busy;
    stopButton.disabled = !busy;
  }

  // ---------------------------------------------------------------- connection

  function wsUrl() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const token = storage.get(sessionStorage, TOKEN_KEY);
    const query = token ? `?token=${encodeURIComponent(token)}` : "";
    return `${scheme}://${location.host}/ws/chat${query}`;
  }

  function setConnection(state, label) {
    connection.dataset.state = state;
    connection.textContent = label;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    opened = false;
    setConnection("connecting", "connecting…");
    const ws = new WebSocket(wsUrl());
    socket = ws;
    ws.addEventListener("open", () => {
      if (ws !== socket) return;
      opened = true;
      setConnection("open", "connected");
      unanswered = [];
      while (outbox.length && ws.readyState === WebSocket.OPEN) {
        const text = outbox.shift();
        ws.send(text);
        unanswered.push(text);
      }
    });
    ws.addEventListener("message", (event) => {
      if (ws !== socket) return;
      unanswered = [];  // the server has read this socket: it was not refused
      let envelope;
      try { envelope = JSON.parse(event.data); } catch { return; }
      handleEnvelope(envelope);
    });
    ws.addEventListener("close", (event) => {
      if (ws !== socket) return;
      setConnection("closed", "disconnected");
      const refused = event.code === TRY_AGAIN_LATER;
      if (refused) outbox.unshift(...unanswered);
      unanswered = [];
      if (current && !refused) failCurrent("The connection was lost before the answer completed.");
      if (AUTH_CLOSE_CODES.has(event.code) || (!opened && event.code === 1006 && needsToken)) {
        askForToken(storage.get(sessionStorage, TOKEN_KEY)
          ? "The server rejected the access token." : "This server requires an access token.");
        return;  // wait for the user: retrying with the same credentials would only fail again
      }
      if (opened && !refused) reconnectDelay = 500;
      // Up to half again as long: tabs refused together do not all come back together.
      reconnectTimer = setTimeout(connect, reconnectDelay * (1 + Math.random() / 2));
      reconnectDelay = Math.min(reconnectDelay * 2, MAX_RECONNECT_DELAY_MS);
    });
  }

  function send(frame) {
    const text = JSON.stringify(frame);
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(text);
      unanswered.push(text);
    } else outbox.push(text);
  }

  // ---------------------------------------------------------------- auth and health

  let needsToken = false;

  function askForToken(reason) {
    auth.hidden = false;
    tokenInput.placeholder = reason || "paste the server's bearer token";
    tokenInput.focus();
  }

  function saveToken() {
    const token = tokenInput.value.trim();
    if (token) storage.set(sessionStorage, TOKEN_KEY, token);
    else storage.remove(sessionStorage, TOKEN_KEY);
    tokenInput.value = "";
    auth.hidden = true;
    if (socket) { const old = socket; socket = null; old.close(); }
    connect();
    loadModels();
  }

  async function checkHealth() {
    try {
      const response = await fetch("/health", { headers: { Accept: "application/json" } });
      if (response.status === 401 || response.status === 403) { needsToken = true; return; }
      if (!response.ok) return;
      const health = await response.json();
      if (health && health.simulated === true) {
        banner.textContent = "Demo mode: answers come from the built-in simulator, not a real " +
          "model (no API key is configured).";
        banner.hidden = false;
      }
      if (health && (health.auth_required === true || health.auth === "bearer")) needsToken = true;
    } catch { /* health is informative only */ }
  }

  // ---------------------------------------------------------------- models

  // GET /api/models: {"models": [{"provider", "model"}...], "default": "<model>"}. The picker
  // shows only when there is a choice; the chosen model travels as payload.model.
  async function loadModels() {
    const token = storage.get(sessionStorage, TOKEN_KEY);
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    let listing;
    try {
      const response = await fetch("/api/models", { headers });
      if (!response.ok) return;
      listing = await response.json();
    } catch { return; }
    const models = Array.isArray(listing && listing.models) ? listing.models : [];
    const names = [...new Set(models.map((m) => m && m.model).filter((m) => typeof m === "string"))];
    if (names.length < 2) { modelPicker.hidden = true; return; }
    modelPicker.replaceChildren();
    for (const entry of models) {
      if (!entry || typeof entry.model !== "string") continue;
      if ([...modelPicker.options].some((option) => option.value === entry.model)) continue;
      const label = entry.provider ? `${entry.model} (${entry.provider})` : entry.model;
      const option = el("option", null, label);
      option.value = entry.model;
      modelPicker.appendChild(option);
    }
    const saved = storage.get(localStorage, MODEL_KEY);
    const preferred = names.includes(saved) ? saved : listing.default;
    if (names.includes(preferred)) modelPicker.value = preferred;
    modelPicker.hidden = false;
  }

  modelPicker.addEventListener("change", () => storage.set(localStorage, MODEL_KEY, modelPicker.value));

  // ---------------------------------------------------------------- requests

  function startChat(text) {
    const id = uuid();
    addMessage("user", text);
    const { msg, body } = addMessage("assistant");
    msg.dataset.requestId = id;
    msg.dataset.state = "streaming";
    current = { id, msg, body, toolCalls: new Map(), segment: null, thinking: null };
    setBusy(true);
    const payload = { text, streaming: true, metadata: {} };
    if (!modelPicker.hidden && modelPicker.value) payload.model = modelPicker.value;
    const conversationId = storage.get(localStorage, CONVERSATION_KEY);
    if (conversationId) payload.conversation_id = conversationId;
    send({ action: "chat", request_id: id, payload });
  }

  function closeThinking(request) {
    if (request.thinking) {
      request.thinking.box.dataset.state = "done";
      request.thinking.box.querySelector("summary").textContent = "Thinking";
      request.thinking = null;
    }
  }

  function appendText(request, delta) {
    closeThinking(request);
    if (!request.segment || request.body.lastChild !== request.segment.node) {
      request.segment = { node: el("div", "text markdown"), source: "" };
      request.body.appendChild(request.segment.node);
    }
    request.segment.source += delta;
    scheduleRender(request.segment);
  }

  function appendReasoning(request, delta) {
    const follow = nearBottom();
    if (!request.thinking || request.body.lastChild !== request.thinking.box) {
      closeThinking(request);
      const box = el("details", "thinking");  // collapsed: the answer is what matters
      box.dataset.state = "streaming";
      box.appendChild(el("summary", null, "Thinking"));
      const text = el("div", "thinking-text");
      box.appendChild(text);
      request.body.appendChild(box);
      request.thinking = { box, text };
    }
    request.thinking.text.appendChild(document.createTextNode(delta));
    scrollIfFollowing(follow);
  }

  function pretty(value) {
    if (typeof value === "string") {
      try { return JSON.stringify(JSON.parse(value), null, 2); } catch { return value; }
    }
    try { return JSON.stringify(value, null, 2); } catch { return String(value); }
  }

  function toolCallStarted(request, data) {
    const follow = nearBottom();
    closeThinking(request);
    const box = el("details", "tool-call");
    box.dataset.status = "started";
    if (data.call_id) box.dataset.callId = data.call_id;
    const summary = el("summary");
    summary.appendChild(el("span", "state", "⚙ running"));
    summary.appendChild(el("span", "name", data.server ? `${data.server} · ${data.tool}` : data.tool));
    summary.appendChild(el("span", "duration"));
    box.appendChild(summary);
    box.appendChild(el("pre", "arguments", pretty(data.arguments ?? {})));
    request.body.appendChild(box);
    request.toolCalls.set(data.call_id, box);
    scrollIfFollowing(follow);
  }

  function toolCallFinished(request, data) {
    let box = request.toolCalls.get(data.call_id);
    if (!box) { toolCallStarted(request, data); box = request.toolCalls.get(data.call_id); }
    box.dataset.status = data.is_error ? "error" : "finished";
    box.querySelector(".state").textContent = data.is_error ? "✗ failed" : "✓ done";
    if (typeof data.duration_ms === "number") {
      box.querySelector(".duration").textContent = `${Math.round(data.duration_ms)} ms`;
    }
    let result = box.querySelector("pre.result");
    if (!result) { result = el("pre", "result"); box.appendChild(result); }
    result.textContent = data.result_preview ?? "";
    if (data.is_error) box.open = true;
  }

  function finish(request) {
    closeThinking(request);
    if (request.segment) { dirtySegments.delete(request.segment); renderMarkdown(request.segment.node, request.segment.source); }
    request.msg.dataset.state = "done";
    if (current === request) { current = null; setBusy(false); }
  }

  function failCurrent(message, errorType) {
    const request = current;
    if (!request) return;
    closeThinking(request);
    const box = el("div", "error", errorType ? `${message} (${errorType})` : message);
    request.msg.appendChild(box);
    request.msg.dataset.state = "error";
    current = null;
    setBusy(false);
  }

  function describeCompletion(chunk) {
    const parts = [];
    if (chunk.provider) parts.push(chunk.provider);
    if (chunk.model) parts.push(chunk.model);
    const usage = chunk.usage || {};
    const total = usage.total_tokens ??
      ((usage.prompt_tokens || 0) + (usage.completion_tokens || 0) || undefined);
    if (total !== undefined) parts.push(`${total} tokens`);
    if (usage.reasoning_tokens) parts.push(`${usage.reasoning_tokens} reasoning`);
    if (typeof chunk.cost === "number") parts.push(`$${chunk.cost.toFixed(chunk.cost < 0.01 ? 5 : 3)}`);
    return parts.join(" · ");
  }

  function handleEnvelope(envelope) {
    const chunk = envelope.chunk || {};
    const request = current && envelope.request_id === current.id ? current : null;
    switch (envelope.status) {
      case "processing": {
        const conversationId = chunk.metadata && chunk.metadata.conversation_id;
        if (conversationId) storage.set(localStorage, CONVERSATION_KEY, conversationId);
        break;
      }
      case "chunk": {
        if (!request) break;
        if (chunk.type === "text" && typeof chunk.data === "string") appendText(request, chunk.data);
        else if (chunk.type === "reasoning" && typeof chunk.data === "string") {
          appendReasoning(request, chunk.data);
        }
        else if (chunk.type === "tool_call_started") toolCallStarted(request, chunk.data || {});
        else if (chunk.type === "tool_call_finished") toolCallFinished(request, chunk.data || {});
        break;
      }
      case "error": {
        const message = chunk.error || "The request failed.";
        // A stored id this server does not know (another server, another token): start afresh.
        if (chunk.error_type === "unknown_conversation") storage.remove(localStorage, CONVERSATION_KEY);
        if (request) failCurrent(message, chunk.error_type);
        else addMessage("system", chunk.error_type ? `${message} (${chunk.error_type})` : message);
        break;
      }
      case "complete": {
        if (!request) break;
        const meta = describeCompletion(chunk);
        if (meta) request.msg.appendChild(el("div", "meta", meta));
        if (!request.segment && !request.body.textContent && !request.toolCalls.size) {
          request.body.textContent = request.stopped ? "(stopped)" : "(no answer)";
        }
        finish(request);
        break;
      }
      default:
        break;
    }
  }

  // ---------------------------------------------------------------- controls

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || current) return;
    input.value = "";
    autosize();
    startChat(text);
  });

  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });

  function autosize() {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight + 2, 200)}px`;
  }
  input.addEventListener("input", autosize);

  stopButton.addEventListener("click", () => {
    if (!current) return;
    current.stopped = true;
    send({ action: "cancel", request_id: current.id });
    stopButton.disabled = true;  // the server ends the request with an error or complete
  });

  $("clear").addEventListener("click", () => {
    if (current) {
      send({ action: "cancel", request_id: current.id });
      failCurrent("Stopped: the conversation was cleared.");
    }
    // The stored conversation, not the socket's: after a reload or a reconnect the socket has
    // none yet, and a bare clear_history would leave the history the next message resumes.
    const conversationId = storage.get(localStorage, CONVERSATION_KEY);
    send(conversationId ? { action: "clear_history", conversation_id: conversationId }
      : { action: "clear_history" });
    messages.replaceChildren();
  });

  $("token-toggle").addEventListener("click", () => {
    if (auth.hidden) askForToken(); else auth.hidden = true;
  });
  $("token-save").addEventListener("click", saveToken);
  tokenInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); saveToken(); }
  });

  setBusy(false);
  checkHealth().finally(() => { connect(); loadModels(); });
})();
