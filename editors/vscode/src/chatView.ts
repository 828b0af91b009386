// The Chat view: a webview (media/chat.js) for the conversation; the extension host does every
// request (the service refuses browser origins) and posts the streamed events to the webview.

import * as vscode from "vscode";
import { isAbort, ServiceError, type CorollaClient } from "./client";
import { messageOf } from "./editFlow";
import type { InlineEdits } from "./inlineEdit";
import type { ChatEvent, EditorState } from "./types";
import { editorState, type EditorTracker } from "./workspace";

/** Messages from the webview (media/chat.js). */
type FromWebview =
  | { type: "ready" }
  | { type: "send"; text: string }
  | { type: "stop" }
  | { type: "newSession" }
  | { type: "deleteSession"; id: string }
  | { type: "selectSession"; id: string }
  | { type: "copy"; text: string }
  | { type: "insert"; text: string }
  | { type: "apply"; text: string };

export class ChatView implements vscode.WebviewViewProvider, vscode.Disposable {
  static readonly id = "corolla.chat";
  private view: vscode.WebviewView | undefined;
  private ready: Promise<void>;
  private markReady: () => void = () => {};
  private sessionId: string | null = null;
  private abort: AbortController | null = null;
  private readonly disposables: vscode.Disposable[] = [];

  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly client: () => CorollaClient,
    private readonly tracker: EditorTracker,
    private readonly edits: InlineEdits,
    private readonly onCommitMessage: (text: string) => void,
  ) {
    this.ready = new Promise((resolve) => (this.markReady = resolve));
  }

  dispose(): void {
    this.abort?.abort();
    for (const d of this.disposables) d.dispose();
  }

  resolveWebviewView(view: vscode.WebviewView): void {
    this.view = view;
    view.webview.options = {
      enableScripts: true,
      localResourceRoots: [vscode.Uri.joinPath(this.extensionUri, "media"), vscode.Uri.joinPath(this.extensionUri, "dist")],
    };
    view.webview.html = this.html(view.webview);
    this.disposables.push(
      view.webview.onDidReceiveMessage((m: FromWebview) => void this.receive(m)),
      view.onDidDispose(() => {
        this.view = undefined;
        this.ready = new Promise((resolve) => (this.markReady = resolve));
      }),
    );
  }

  /** Show the view and run `text` (a message or /command) in it, with the editor state taken now. */
  async run(text: string, state?: EditorState): Promise<void> {
    state ??= editorState(this.tracker.editor);
    await vscode.commands.executeCommand(`${ChatView.id}.focus`);
    await Promise.race([this.ready, new Promise((r) => setTimeout(r, 10_000))]);
    await this.send(text, state);
  }

  async newSession(): Promise<void> {
    this.abort?.abort();
    this.sessionId = null;
    this.post({ type: "history", messages: [] });
    await this.refreshSessions();
  }

  // --- the webview's messages -----------------------------------------------------------------
  private async receive(m: FromWebview): Promise<void> {
    switch (m.type) {
      case "ready":
        if (this.sessionId) await this.loadSession(this.sessionId);
        else await this.refreshSessions();
        this.markReady(); // after the history, so that a turn run() starts is not wiped by it
        return;
      case "send":
        return this.send(m.text);
      case "stop":
        this.abort?.abort();
        return;
      case "newSession":
        return this.newSession();
      case "deleteSession":
        return this.deleteSession(m.id);
      case "selectSession":
        return this.loadSession(m.id);
      case "copy":
        await vscode.env.clipboard.writeText(m.text);
        void vscode.window.setStatusBarMessage("Corolla: copied", 2000);
        return;
      case "insert":
        return this.insert(m.text);
      case "apply":
        return this.edits.applyText(m.text);
    }
  }

  private async send(text: string, state?: EditorState): Promise<void> {
    text = text.trim();
    if (!text) return;
    if (this.abort) {
      this.post({ type: "error", message: "A reply is still streaming: stop it first." });
      return;
    }
    const abort = (this.abort = new AbortController());
    state ??= editorState(this.tracker.editor);
    this.post({ type: "user", text });
    this.post({ type: "busy", busy: true });
    try {
      if (!this.sessionId) this.sessionId = (await this.client().createSession()).id;
      this.post({ type: "assistantStart" });
      for await (const event of this.client().sendMessage(this.sessionId, text, state, abort.signal)) {
        await this.handle(event);
      }
    } catch (error) {
      if (isAbort(error)) {
        this.post({ type: "stopped" });
      } else {
        if (error instanceof ServiceError && error.status === 404) this.sessionId = null;
        this.post({ type: "error", message: messageOf(error) });
      }
    } finally {
      this.abort = null;
      this.post({ type: "busy", busy: false });
      await this.refreshSessions();
    }
  }

  private async handle(event: ChatEvent): Promise<void> {
    switch (event.type) {
      case "session":
        this.sessionId = event.id;
        return;
      case "context":
        this.post({ type: "context", parts: event.parts, used: event.used_tokens, budget: event.budget_tokens,
                    dropped: event.dropped });
        return;
      case "delta":
        this.post({ type: "delta", text: event.text });
        return;
      case "edit":
        this.post({ type: "notice", text: `Proposed edit to ${event.files.join(", ")}: review the diff ` +
                                          "(Tab to accept, Esc to discard)." });
        void this.edits.offerService(event);
        return;
      case "edit_error":
        this.post({ type: "error", message: `The edit could not be applied: ${event.error.message}` });
        return;
      case "commit_message":
        this.onCommitMessage(event.text);
        return;
      case "error":
        this.post({ type: "error", message: event.error.message });
        return;
      case "done":
        this.post({ type: "done" });
        return;
    }
  }

  private async refreshSessions(): Promise<void> {
    try {
      const sessions = await this.client().sessions("chat");
      this.post({ type: "sessions", current: this.sessionId,
                  sessions: sessions.map((s) => ({ id: s.id, title: s.title || "(untitled)" })) });
    } catch {
      this.post({ type: "sessions", current: this.sessionId, sessions: [] });
    }
  }

  private async loadSession(id: string): Promise<void> {
    if (this.abort) return;
    try {
      const session = await this.client().session(id);
      this.sessionId = id;
      this.post({ type: "history", messages: session.messages
        .filter((m) => m.role === "user" || m.role === "assistant")
        .map((m) => ({ role: m.role, content: m.content })) });
    } catch (error) {
      this.post({ type: "error", message: messageOf(error) });
    }
    await this.refreshSessions();
  }

  private async deleteSession(id: string): Promise<void> {
    try {
      await this.client().deleteSession(id);
    } catch (error) {
      this.post({ type: "error", message: messageOf(error) });
    }
    if (id === this.sessionId) await this.newSession();
    else await this.refreshSessions();
  }

  private async insert(text: string): Promise<void> {
    const editor = this.tracker.editor;
    if (!editor) {
      void vscode.window.showErrorMessage("Corolla: open an editor to insert the code into.");
      return;
    }
    await editor.edit((b) => b.replace(editor.selection, text));
  }

  private post(message: Record<string, unknown>): void {
    void this.view?.webview.postMessage(message);
  }

  private html(webview: vscode.Webview): string {
    const nonce = makeNonce();
    const uri = (...p: string[]) => webview.asWebviewUri(vscode.Uri.joinPath(this.extensionUri, ...p));
    const csp = [`default-src 'none'`, `style-src ${webview.cspSource}`, `img-src ${webview.cspSource} data:`,
                 `font-src ${webview.cspSource}`, `script-src 'nonce-${nonce}'`].join("; ");
    return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${uri("media", "chat.css")}">
<title>Corolla Chat</title>
</head>
<body>
<div id="toolbar">
  <select id="session" title="Chat session"></select>
  <button id="new-session" title="New chat">New</button>
  <button id="delete-session" title="Delete this chat">Delete</button>
</div>
<div id="messages" role="log" aria-live="polite"></div>
<div id="chips"></div>
<div id="composer">
  <textarea id="prompt" rows="3" placeholder="Ask Corolla (Enter sends, Shift+Enter for a new line; /explain /fix /tests /doc /review /commit)"></textarea>
  <div id="actions">
    <button id="send" title="Send (Enter)">Send</button>
    <button id="stop" title="Stop the reply" disabled>Stop</button>
  </div>
</div>
<script nonce="${nonce}" src="${uri("dist", "markdown.js")}"></script>
<script nonce="${nonce}" src="${uri("media", "chat.js")}"></script>
</body>
</html>`;
  }
}

function makeNonce(): string {
  const chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  let nonce = "";
  for (let i = 0; i < 32; i++) nonce += chars[Math.floor(Math.random() * chars.length)];
  return nonce;
}
