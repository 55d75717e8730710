// The chat page: one WebSocket to /ws for generations, the REST session routes for the sidebar.
// All URLs are relative to the worker's root (the page lives at <root>/ui/), so the page works
// behind a proxy under a sub-path. Model output and stored history are shown through
// GemmaMarkdown.render or textContent only: never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const root = new URL("../", location.href);
  const KEY = "gemma-worker.key";
  const SESSION = "gemma-worker.session";
  const SETTINGS = "gemma-worker.settings";
  const MODEL = "gemma-worker.model";
  const QA = /^\n?Question: ([\s\S]*)\nAnswer:$/;

  const ui = {
    messages: $("messages"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
    progress: $("progress"), alert: $("alert"), connection: $("connection"), model: $("model"),
    sessions: $("sessions"), keyPanel: $("key-panel"), keyMessage: $("key-message"),
    keyInput: $("key-input"), schema: $("schema"), system: $("system"), wrap: $("wrap"),
    format: $("prompt-format"), temperature: $("temperature"), topP: $("top-p"),
    maxTokens: $("max-tokens"), picker: $("model-picker"),
  };
  const SETTING_FIELDS = ["temperature", "topP", "maxTokens", "format", "wrap", "system", "schema"];

  const state = {
    key: sessionStorage.getItem(KEY) || "",
    session: localStorage.getItem(SESSION),
    turns: 0,
    model: null,
    models: [], // the cards of /v1/models
    sessionModel: null, // the open session's model (it keeps it)
    ws: null,
    wsWanted: false,
    retries: 0,
    lostConnection: false,
    running: null, // {id, bubble, body, meta, text, tokens}
    renderQueued: false,
  };

  // ---- small helpers -------------------------------------------------------------------

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function newId() {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes); // randomUUID needs a secure context; this does not
    return "ui-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function showAlert(text, kind) {
    ui.alert.textContent = text;
    ui.alert.className = "alert " + (kind || "error");
    ui.alert.hidden = !text;
  }

  function setConnection(text, kind) {
    ui.connection.textContent = text;
    ui.connection.className = "pill " + (kind || "");
  }

  function withRetry(message, retryAfter) {
    return retryAfter ? `${message} (retry in ${Math.ceil(retryAfter)} s)` : message;
  }

  async function api(path, options) {
    const headers = Object.assign({ Accept: "application/json" }, (options || {}).headers);
    if (state.key) headers.Authorization = "Bearer " + state.key;
    const response = await fetch(new URL(path, root), Object.assign({}, options, { headers }));
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401) {
      askForKey(Boolean(state.key));
      throw new Error("unauthorized");
    }
    if (!response.ok) {
      const retry = Number(response.headers.get("Retry-After")) || (body && body.retry_after);
      const message = (body && body.error) || `HTTP ${response.status}`;
      const error = new Error(withRetry(message, retry));
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // ---- settings ------------------------------------------------------------------------

  function loadSettings() {
    let saved = {};
    try {
      saved = JSON.parse(localStorage.getItem(SETTINGS) || "{}") || {};
    } catch (_) {
      saved = {};
    }
    for (const name of SETTING_FIELDS) {
      if (!(name in saved)) continue;
      if (ui[name].type === "checkbox") ui[name].checked = Boolean(saved[name]);
      else ui[name].value = String(saved[name]);
    }
  }

  function saveSettings() {
    const out = {};
    for (const name of SETTING_FIELDS) {
      out[name] = ui[name].type === "checkbox" ? ui[name].checked : ui[name].value;
    }
    localStorage.setItem(SETTINGS, JSON.stringify(out));
  }

  function plainFormat() {
    const chosen = ui.format.value;
    if (chosen !== "auto") return chosen === "plain";
    const m = state.model;
    return !(m && m.instruction_tuned && m.has_chat_template);
  }

  // ---- API key -------------------------------------------------------------------------

  function askForKey(wrong) {
    ui.keyMessage.textContent = wrong
      ? "That API key was refused. Check it and enter it again."
      : "This worker needs an API key.";
    ui.keyMessage.className = wrong ? "error-text" : "";
    ui.keyPanel.hidden = false;
    ui.keyInput.focus();
    closeSocket();
    setConnection("needs a key", "bad");
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = ui.keyInput.value.trim();
    sessionStorage.setItem(KEY, state.key);
    ui.keyInput.value = "";
    ui.keyPanel.hidden = true;
    start();
  });

  // ---- conversation view ---------------------------------------------------------------

  function addMessage(role, text) {
    const bubble = el("article", "message " + role);
    bubble.setAttribute("aria-label", role === "user" ? "You" : "Model");
    const body = el("div", "body");
    const meta = el("div", "meta");
    bubble.append(body, meta);
    if (role === "user") body.textContent = text;
    else GemmaMarkdown.render(text, body);
    ui.messages.appendChild(bubble);
    ui.messages.scrollTop = ui.messages.scrollHeight;
    return { bubble, body, meta };
  }

  function userText(input) {
    const m = QA.exec(input);
    return m ? m[1] : input;
  }

  function showHistory(history) {
    ui.messages.replaceChildren();
    for (const turn of history) {
      addMessage("user", userText(turn.user));
      const answer = addMessage("assistant", turn.assistant);
      answer.meta.textContent = `${turn.prompt_tokens} prompt + ${turn.completion_tokens} generated tokens`;
    }
  }

  function queueRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(() => {
      state.renderQueued = false;
      const run = state.running;
      if (!run) return;
      GemmaMarkdown.render(run.text, run.body);
      run.meta.textContent = `${run.tokens} tokens…`;
      ui.messages.scrollTop = ui.messages.scrollHeight;
    });
  }

  function setBusy(busy) {
    ui.send.disabled = busy;
    ui.stop.disabled = !busy;
    ui.messages.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function finish(run) {
    if (state.running === run) state.running = null;
    ui.progress.textContent = "";
    setBusy(false);
  }

  // ---- models --------------------------------------------------------------------------

  const STATUS = { loaded: "loaded", loading: "loading…", unloaded: "not loaded" };

  function modelLabel(card) {
    const status = card.status || {};
    const note = status.failed ? "failed to load" : STATUS[status.value] || status.value;
    return note ? `${card.id} · ${note}` : card.id;
  }

  async function refreshModels() {
    let listing;
    try {
      listing = await api("v1/models");
    } catch (_) {
      return;
    }
    // Embedding models do not chat.
    state.models = listing.data.filter((c) => !c.capabilities || c.capabilities.includes("completion"));
    const wanted = state.sessionModel || ui.picker.value || localStorage.getItem(MODEL);
    ui.picker.replaceChildren();
    for (const card of state.models) {
      const option = el("option", null, modelLabel(card));
      option.value = card.id;
      ui.picker.appendChild(option);
    }
    const fallback = state.models.find((c) => c.default) || state.models[0];
    const known = state.models.some((c) => c.id === wanted);
    ui.picker.value = known ? wanted : fallback ? fallback.id : "";
    showPicker();
  }

  function showPicker() {
    // A session keeps its model: the picker shows it, and chooses only for a new chat.
    if (state.sessionModel && state.models.some((c) => c.id === state.sessionModel)) {
      ui.picker.value = state.sessionModel;
    }
    ui.picker.disabled = state.models.length < 2 || Boolean(state.session);
    ui.picker.title = state.session
      ? "This chat keeps its model; start a new chat for another"
      : "The model new chats use";
  }

  function sessionTitle(s) {
    if (!s.title) return new Date(s.updated * 1000).toLocaleString();
    // The page writes plain-format turns as "Question: ...\nAnswer:": show the question.
    return s.title.replace(/^Question: /, "").replace(/ Answer:$/, "");
  }

  // ---- sessions ------------------------------------------------------------------------

  function setSession(id, model) {
    state.session = id;
    if (model !== undefined) state.sessionModel = model;
    if (!id) state.sessionModel = null;
    if (id) localStorage.setItem(SESSION, id);
    else localStorage.removeItem(SESSION);
    showPicker();
    for (const item of ui.sessions.querySelectorAll("button.open")) {
      item.setAttribute("aria-current", item.dataset.id === id ? "true" : "false");
    }
  }

  async function refreshSessions() {
    let listing;
    try {
      listing = await api("v1/sessions?limit=50");
    } catch (_) {
      return;
    }
    ui.sessions.replaceChildren();
    for (const s of listing.sessions) {
      const li = el("li");
      const open = el("button", "open");
      open.type = "button";
      open.dataset.id = s.id;
      const when = new Date(s.updated * 1000).toLocaleString();
      const title = sessionTitle(s);
      open.title = `${when}${s.model ? " · " + s.model : ""}`;
      open.append(el("span", "title", title), el("span", "muted", ` ${s.turns} turn${s.turns === 1 ? "" : "s"}${s.model ? " · " + s.model : ""}`));
      open.setAttribute("aria-current", s.id === state.session ? "true" : "false");
      open.addEventListener("click", () => openSession(s.id));
      const del = el("button", "delete", "×");
      del.type = "button";
      del.title = "Delete this session";
      del.setAttribute("aria-label", `Delete session "${title}" (${when})`);
      del.addEventListener("click", () => deleteSession(s.id));
      li.append(open, del);
      ui.sessions.appendChild(li);
    }
  }

  async function openSession(id) {
    if (state.running) return;
    try {
      const s = await api("v1/sessions/" + encodeURIComponent(id));
      setSession(id, s.model || null);
      state.turns = s.history.length;
      showHistory(s.history);
      showAlert("");
    } catch (error) {
      if (error.status === 404) {
        setSession(null);
        ui.messages.replaceChildren();
        refreshSessions();
      } else if (error.message !== "unauthorized") {
        showAlert(error.message);
      }
    }
  }

  async function deleteSession(id) {
    try {
      await api("v1/sessions/" + encodeURIComponent(id), { method: "DELETE" });
    } catch (error) {
      if (error.message !== "unauthorized" && error.status !== 404) showAlert(error.message);
    }
    if (id === state.session) newSession();
    refreshSessions();
  }

  function newSession() {
    if (state.running) return;
    setSession(null);
    state.turns = 0;
    ui.messages.replaceChildren();
    showAlert("");
    ui.prompt.focus();
  }

  // ---- the WebSocket -------------------------------------------------------------------

  function closeSocket() {
    state.wsWanted = false;
    if (state.ws) state.ws.close(1000);
    state.ws = null;
  }

  function connect() {
    state.wsWanted = true;
    const url = new URL("ws", root);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    state.ws = ws;
    ws.addEventListener("open", () => {
      if (state.ws !== ws) return;
      if (state.key) ws.send(JSON.stringify({ type: "auth", token: state.key }));
      state.retries = 0;
      setConnection("connected", "good");
      if (state.lostConnection) {
        state.lostConnection = false;
        showAlert("Reconnected.", "info");
      }
    });
    ws.addEventListener("message", (event) => {
      for (const line of String(event.data).split("\n")) {
        if (line.trim()) onEvent(JSON.parse(line));
      }
    });
    ws.addEventListener("close", (event) => {
      if (state.ws !== ws) return;
      state.ws = null;
      const run = state.running;
      if (run) {
        run.bubble.classList.add("failed");
        run.meta.textContent = "interrupted: the connection dropped";
        finish(run);
      }
      if (event.code === 1008) {
        if (/auth|key/i.test(event.reason)) askForKey(true);
        else showAlert(`The worker refused the connection: ${event.reason || "policy"}`);
        return;
      }
      if (!state.wsWanted) return;
      state.lostConnection = true;
      const delay = Math.min(5000, 500 * 2 ** state.retries++);
      setConnection("reconnecting…", "bad");
      showAlert(`Connection lost; reconnecting in ${(delay / 1000).toFixed(1)} s…`, "warn");
      setTimeout(() => {
        if (state.wsWanted && state.ws === null) connect();
      }, delay);
    });
  }

  function onEvent(event) {
    const run = state.running;
    const mine = run && event.request_id === run.id;
    switch (event.type) {
      case "session":
        // A new session exists once its first turn is stored: a cancelled one never does.
        if (mine && !event.new) setSession(event.session_id);
        break;
      case "reasoning":
        if (!mine) break;
        if (event.stage === "queued") ui.progress.textContent = `Queued: position ${event.queue_position}`;
        else if (event.stage === "loading") {
          ui.progress.textContent = `Loading model ${event.model}…`;
          refreshModels();
        }
        else if (event.stage === "prompt") {
          ui.progress.textContent =
            `Processing ${event.n_prompt_tokens} prompt tokens (${event.n_cached_tokens} cached)…`;
        } else ui.progress.textContent = event.content;
        break;
      case "token":
        if (!mine) break;
        if (!run.tokens) ui.progress.textContent = "Generating…";
        run.text += event.content;
        run.tokens += 1;
        queueRender();
        break;
      case "result": {
        if (!mine) break;
        run.text = event.content;
        GemmaMarkdown.render(run.text, run.body);
        const t = event.timings || {};
        const u = event.usage || {};
        const parts = [
          `first token ${Math.round(t.ttft_ms)} ms`,
          `${(t.tokens_per_second || 0).toFixed(1)} tokens/s`,
          `${u.prompt_tokens} prompt (${u.cached_tokens} cached) + ${u.completion_tokens} generated tokens`,
          event.finish_reason,
        ];
        if (event.model && state.models.length > 1) parts.unshift(event.model);
        run.meta.textContent = parts.join(" · ");
        run.meta.classList.add("timings");
        if (event.finish_reason === "cancelled") run.bubble.classList.add("cancelled");
        else {
          setSession(event.session_id, event.model || null);
          state.turns += 1;
        }
        finish(run);
        refreshSessions();
        refreshModels();
        break;
      }
      case "error":
        if (mine) {
          run.bubble.classList.add("failed");
          run.meta.textContent = withRetry(`${event.code}: ${event.error}`, event.retry_after);
          if (event.code === "SESSION_NOT_FOUND") {
            setSession(null);
            state.turns = 0;
            run.meta.textContent += " A new session starts with your next message.";
          }
          finish(run);
        } else if (!run || !event.request_id) {
          showAlert(withRetry(event.error, event.retry_after));
        }
        break;
      default:
        break;
    }
  }

  // ---- sending and stopping ------------------------------------------------------------

  function buildRequest(text, id) {
    const request = { type: "execute", request_id: id, input: text };
    // An empty field leaves the choice to the worker's settings.
    if (ui.maxTokens.value !== "") request.max_tokens = Number(ui.maxTokens.value);
    if (ui.temperature.value !== "") request.temperature = Number(ui.temperature.value);
    if (ui.topP.value !== "") request.top_p = Number(ui.topP.value);
    if (ui.format.value !== "auto") request.prompt_format = ui.format.value;
    const schemaText = ui.schema.value.trim();
    if (schemaText) {
      request.response_format = {
        type: "json_schema",
        json_schema: { name: "answer", schema: JSON.parse(schemaText) },
      };
    }
    if (plainFormat() && ui.wrap.checked) {
      request.input = `${state.turns > 0 ? "\n" : ""}Question: ${text}\nAnswer:`;
      if (!schemaText) request.stop = ["\nQuestion:"];
    }
    if (state.session) request.session_id = state.session;
    else {
      // Not the connection's current session: a new chat is a new session.
      request.new_session = true;
      if (ui.system.value.trim()) request.system = ui.system.value;
      if (ui.picker.value && state.models.length > 1) request.model = ui.picker.value;
    }
    return request;
  }

  function send() {
    const text = ui.prompt.value;
    if (!text.trim() || state.running) return;
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) {
      showAlert("Not connected to the worker yet; try again in a moment.", "warn");
      return;
    }
    let request;
    try {
      request = buildRequest(text, newId());
    } catch (_) {
      showAlert("The JSON schema is not valid JSON.");
      ui.schema.focus();
      return;
    }
    showAlert("");
    addMessage("user", text);
    const answer = addMessage("assistant", "");
    state.running = Object.assign(answer, { id: request.request_id, text: "", tokens: 0 });
    ui.progress.textContent = "Sending…";
    setBusy(true);
    ui.prompt.value = "";
    state.ws.send(JSON.stringify(request));
  }

  function stop() {
    const run = state.running;
    if (!run || !state.ws || state.ws.readyState !== WebSocket.OPEN) return;
    state.ws.send(JSON.stringify({ type: "cancel", request_id: run.id }));
    ui.progress.textContent = "Stopping…";
  }

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  ui.prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.running) {
      event.preventDefault();
      stop();
    }
  });
  ui.stop.addEventListener("click", stop);
  $("new-session").addEventListener("click", newSession);
  for (const name of SETTING_FIELDS) ui[name].addEventListener("change", saveSettings);
  ui.picker.addEventListener("change", () => localStorage.setItem(MODEL, ui.picker.value));

  // ---- start ---------------------------------------------------------------------------

  async function start() {
    setConnection("connecting…");
    let info;
    try {
      info = await api("");
    } catch (error) {
      if (error.message !== "unauthorized") {
        showAlert(`The worker did not answer: ${error.message}`);
        setConnection("offline", "bad");
      }
      return;
    }
    state.model = info.model;
    ui.model.textContent = info.model
      ? `${info.model.name}${info.model.instruction_tuned ? "" : " (base model)"} · ${info.worker_id}`
      : `loading… · ${info.worker_id}`;
    connect();
    await refreshModels();
    await refreshSessions();
    if (state.session) await openSession(state.session);
    ui.prompt.focus();
  }

  loadSettings();
  start();
})();
