// Wiring only: settings, the service client, and each feature's commands and views.

import * as vscode from "vscode";
import { Agents } from "./agents";
import { ChatView } from "./chatView";
import { CorollaClient } from "./client";
import { commandText, CorollaCodeActions, SLASH } from "./codeActions";
import { generateCommitMessage, setCommitMessage } from "./commitMessage";
import { InlineEdits } from "./inlineEdit";
import { ServiceManager } from "./service";
import { DEFAULTS, type Settings } from "./settings";
import { StatusItem } from "./status";
import { editorState, EditorTracker } from "./workspace";

function settings(): Settings {
  const c = vscode.workspace.getConfiguration("corolla");
  return {
    serviceUrl: c.get("serviceUrl", DEFAULTS.serviceUrl) || DEFAULTS.serviceUrl,
    token: c.get("token", DEFAULTS.token),
    endpoint: c.get("endpoint", DEFAULTS.endpoint),
    model: c.get("model", DEFAULTS.model),
    corollaPath: c.get("corollaPath", DEFAULTS.corollaPath) || DEFAULTS.corollaPath,
    autoStart: c.get("autoStart", DEFAULTS.autoStart),
  };
}

let cached: { key: string; client: CorollaClient } | undefined;
function client(): CorollaClient {
  const s = settings();
  const key = `${s.serviceUrl}\n${s.token}`;
  if (cached?.key !== key) cached = { key, client: new CorollaClient({ baseUrl: s.serviceUrl, token: s.token, timeoutMs: 30_000 }) };
  return cached.client;
}

export function activate(context: vscode.ExtensionContext): void {
  const tracker = new EditorTracker();
  const edits = new InlineEdits(client, tracker);
  const chat = new ChatView(context.extensionUri, client, tracker, edits, (text) => {
    if (!setCommitMessage(text)) void vscode.env.clipboard.writeText(text);
  });
  const agents = new Agents(client);
  const status = new StatusItem(client);
  const service = new ServiceManager(settings, client, () => void status.poll());
  const command = (id: string, fn: (...args: any[]) => unknown) => vscode.commands.registerCommand(id, fn);

  context.subscriptions.push(
    tracker, edits, chat, agents, status, service,
    vscode.window.registerWebviewViewProvider(ChatView.id, chat, { webviewOptions: { retainContextWhenHidden: true } }),
    vscode.languages.registerCodeActionsProvider({ scheme: "file" }, new CorollaCodeActions(), CorollaCodeActions.metadata),
    command("corolla.inlineEdit", () => edits.inlineEdit()),
    command("corolla.acceptEdit", () => edits.flow.accept()),
    command("corolla.discardEdit", () => edits.flow.discard()),
    ...Object.keys(SLASH).map((id) => command(id, (args?: unknown) => runInChat(chat, tracker, id, args))),
    command("corolla.commitMessage", (arg?: unknown) => generateCommitMessage(client(), arg)),
    command("corolla.startService", () => service.start(true)),
    command("corolla.showHealth", async () => {
      const state = await status.poll();
      if (state.kind === "model-down") await service.offerSwarm(state.health);
      else if (state.kind === "down") await service.start(true);
    }),
    command("corolla.newSession", async () => {
      await vscode.commands.executeCommand(`${ChatView.id}.focus`);
      await chat.newSession();
    }),
    command("corolla.agentStart", () => agents.start()),
    command("corolla.agentRefresh", () => agents.refresh()),
    command("corolla.agentShowLog", async (arg?: unknown) => withAgent(agents, arg, (id) => agents.showLog(id))),
    command("corolla.agentReviewDiff", async (arg?: unknown) => withAgent(agents, arg, (id) => agents.reviewDiff(id))),
    command("corolla.agentApply", async (arg?: unknown) => withAgent(agents, arg, (id) => agents.act(id, "apply"))),
    command("corolla.agentDiscard", async (arg?: unknown) => withAgent(agents, arg, (id) => agents.act(id, "discard"))),
    command("corolla.agentStop", async (arg?: unknown) => withAgent(agents, arg, (id) => agents.act(id, "stop"))),
  );

  if (settings().autoStart) {
    void client().health().catch(() => service.start(false));
  }
}

export function deactivate(): void {
  cached = undefined;
}

async function withAgent(agents: Agents, arg: unknown, fn: (id: string) => unknown): Promise<void> {
  const id = await agents.pick(arg);
  if (id) await fn(id);
}

/** Explain / Fix / Generate Tests / Generate Docs: the slash command in the Chat view, with the editor as it is now. */
async function runInChat(chat: ChatView, tracker: EditorTracker, id: string, args: unknown): Promise<void> {
  const editor = tracker.editor;
  const state = editorState(editor);
  if (!state.current_file) {
    void vscode.window.showErrorMessage("Corolla: open a file of the workspace first.");
    return;
  }
  await chat.run(commandText(id, args), state);
}
