// The Chat view's page. It only renders and forwards: every request is made by the extension host
// (src/chatView.ts). Model text is put into the page with textContent, never as HTML.
// @ts-check
(function () {
  "use strict";
  // @ts-ignore - provided by VS Code
  const vscode = acquireVsCodeApi();
  // @ts-ignore - dist/markdown.js
  const md = window.corollaMarkdown;

  const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
  const messages = $("messages");
  const prompt = /** @type {HTMLTextAreaElement} */ ($("prompt"));
  const send = /** @type {HTMLButtonElement} */ ($("send"));
  const stop = /** @type {HTMLButtonElement} */ ($("stop"));
  const session = /** @type {HTMLSelectElement} */ ($("session"));
  const chips = $("chips");

  /** @type {{el: HTMLElement, text: string} | null} */
  let current = null;
  let busy = false;
  let renderQueued = false;

  function el(/** @type {string} */ tag, /** @type {string} */ cls, /** @type {string=} */ text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function scroll() {
    messages.scrollTop = messages.scrollHeight;
  }

  /** Render markdown into `target`: paragraphs with inline code/bold/em, and code blocks with buttons. */
  function render(/** @type {HTMLElement} */ target, /** @type {string} */ text) {
    target.replaceChildren();
    for (const block of md.splitBlocks(text)) {
      if (block.kind === "code") {
        const box = el("div", "code-block");
        const bar = el("div", "code-actions");
        if (block.lang) bar.append(el("span", "lang", block.lang));
        for (const [label, type] of [["Copy", "copy"], ["Insert", "insert"], ["Apply", "apply"]]) {
          const b = el("button", "code-action", label);
          b.title = `${label} this code`;
          b.addEventListener("click", () => vscode.postMessage({ type, text: block.code }));
          bar.append(b);
        }
        const pre = el("pre");
        pre.append(el("code", block.lang ? `language-${block.lang}` : "", block.code));
        box.append(bar, pre);
        target.append(box);
        continue;
      }
      for (const para of block.text.split(/\n{2,}/)) {
        const p = el("p");
        para.split("\n").forEach((line, i) => {
          if (i) p.append(el("br"));
          for (const t of md.inlineTokens(line)) {
            if (t.kind === "text") p.append(document.createTextNode(t.text));
            else p.append(el(t.kind === "bold" ? "strong" : t.kind, "", t.text));
          }
        });
        target.append(p);
      }
    }
  }

  function addMessage(/** @type {string} */ role, /** @type {string} */ text) {
    const box = el("div", `message ${role}`);
    if (role === "assistant") render(box, text);
    else box.textContent = text;
    messages.append(box);
    scroll();
    return box;
  }

  function setBusy(/** @type {boolean} */ value) {
    busy = value;
    send.disabled = value;
    stop.disabled = !value;
    document.body.classList.toggle("busy", value);
  }

  function submit() {
    const text = prompt.value.trim();
    if (!text || busy) return;
    prompt.value = "";
    vscode.postMessage({ type: "send", text });
  }

  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  });
  send.addEventListener("click", submit);
  stop.addEventListener("click", () => vscode.postMessage({ type: "stop" }));
  $("new-session").addEventListener("click", () => vscode.postMessage({ type: "newSession" }));
  $("delete-session").addEventListener("click", () => {
    if (session.value) vscode.postMessage({ type: "deleteSession", id: session.value });
  });
  session.addEventListener("change", () => {
    if (session.value) vscode.postMessage({ type: "selectSession", id: session.value });
    else vscode.postMessage({ type: "newSession" });
  });

  window.addEventListener("message", (event) => {
    const m = event.data;
    switch (m.type) {
      case "user":
        chips.replaceChildren();
        addMessage("user", m.text);
        break;
      case "assistantStart":
        current = { el: addMessage("assistant", ""), text: "" };
        current.el.classList.add("streaming");
        break;
      case "delta":
        if (!current) current = { el: addMessage("assistant", ""), text: "" };
        current.text += m.text;
        if (!renderQueued) {
          renderQueued = true;
          requestAnimationFrame(() => {
            renderQueued = false;
            if (current) {
              render(current.el, current.text);
              scroll();
            }
          });
        }
        break;
      case "done":
      case "stopped":
        if (current) {
          render(current.el, current.text);
          current.el.classList.remove("streaming");
          if (m.type === "stopped") current.el.append(el("div", "note", "(stopped)"));
        }
        current = null;
        scroll();
        break;
      case "context":
        chips.replaceChildren();
        for (const part of m.parts) {
          const chip = el("span", "chip", `${part.label} · ${part.tokens}${part.truncated ? " (cut)" : ""}`);
          chip.title = `${part.kind}: ${part.tokens} tokens${part.truncated ? ", truncated" : ""}`;
          chips.append(chip);
        }
        if (m.budget) chips.append(el("span", "budget", `${m.used}/${m.budget} tokens`));
        break;
      case "notice":
        messages.append(el("div", "notice", m.text));
        scroll();
        break;
      case "error":
        if (current) current.el.classList.remove("streaming");
        messages.append(el("div", "message error", m.message));
        scroll();
        break;
      case "busy":
        setBusy(m.busy);
        if (!m.busy && current) {
          render(current.el, current.text);
          current.el.classList.remove("streaming");
          current = null;
        }
        break;
      case "history":
        messages.replaceChildren();
        chips.replaceChildren();
        for (const msg of m.messages) addMessage(msg.role, msg.content);
        break;
      case "sessions": {
        session.replaceChildren(el("option", "", "New chat"));
        /** @type {HTMLOptionElement} */ (session.firstChild).value = "";
        for (const s of m.sessions) {
          const option = /** @type {HTMLOptionElement} */ (el("option", "", s.title));
          option.value = s.id;
          session.append(option);
        }
        session.value = m.current || "";
        break;
      }
    }
  });

  setBusy(false);
  vscode.postMessage({ type: "ready" });
})();
