// Wiring only: settings, the service client, and each feature's commands and views.

import * as vscode from "vscode";
import { Agents } from "./agents";
import { ChatView } from "./chatView";
import { CorollaClient } from "./client";
import { commandText, CorollaCodeActions, SLASH } from "./codeActions";
import { generateCommitMessage, setCommitMessage } from "./commitMessage";
import { CompletionEngine, InlineCompletions } from "./completions";
import { InlineEdits } from "./inlineEdit";
import { ServiceManager } from "./service";
import { completionsEnabled, debounceOf, DEFAULTS, toggleLanguage, type LanguageSwitches, type Settings } from "./settings";
import { CompletionsStatus, StatusItem } from "./status";
import { editorState, EditorTracker, workspaceRoot } from "./workspace";

function settings(): Settings {
  const c = vscode.workspace.getConfiguration("corolla");
  return {
    serviceUrl: c.get("serviceUrl", DEFAULTS.serviceUrl) || DEFAULTS.serviceUrl,
    token: c.get("token", DEFAULTS.token),
    endpoint: c.get("endpoint", DEFAULTS.endpoint),
    model: c.get("model", DEFAULTS.model),
    corollaPath: c.get("corollaPath", DEFAULTS.corollaPath) || DEFAULTS.corollaPath,
    autoStart: c.get("autoStart", DEFAULTS.autoStart),
    completions: c.get<LanguageSwitches>("completions.enable", DEFAULTS.completions) ?? DEFAULTS.completions,
    completionDebounceMs: debounceOf(c.get("completions.debounceMs", DEFAULTS.completionDebounceMs)),
  };
}

const completionsOn = (languageId: string) => completionsEnabled(settings().completions, languageId);

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
  const completionsStatus = new CompletionsStatus(completionsOn);
  const engine = new CompletionEngine({
    request: (body, signal) => client().complete(body, signal),
    debounceMs: () => settings().completionDebounceMs,
    onBusy: (busy) => completionsStatus.setBusy(busy),
    onProblem: (problem) => completionsStatus.setProblem(problem),
  });
  const completions = new InlineCompletions(vscode, engine, completionsOn, () => workspaceRoot()?.fsPath);

  context.subscriptions.push(
    tracker, edits, chat, agents, status, service, completionsStatus,
    vscode.languages.registerInlineCompletionItemProvider([{ scheme: "file" }, { scheme: "untitled" }], completions),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration("corolla")) engine.resume();
    }),
    command("corolla.toggleCompletions", () => toggleCompletions(completionsStatus)),
    vscode.window.registerWebviewViewProvider(ChatView.id, chat, { webviewOptions: { retainContextWhenHidden: true } }),
    vscode.languages.registerCodeActionsProvider({ scheme: "file" }, new CorollaCodeActions(), CorollaCodeActions.metadata),
    command("corolla.inlineEdit", () => edits.inlineEdit()),
    command("corolla.acceptEdit", () => edits.flow.accept()),
    command("corolla.discardEdit", () => edits.flow.discard()),
    ...Object.keys(SLASH).map((id) => command(id, (args?: unknown) => runInChat(chat, tracker, id, args))),
    command("corolla.commitMessage", (arg?: unknown) => generateCommitMessage(client(), arg)),
    command("corolla.startService", () => {
      engine.resume();
      return service.start(true);
    }),
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

/** The status-bar item's click: completions on/off for the active editor's language (user settings). */
async function toggleCompletions(status: CompletionsStatus): Promise<void> {
  const languageId = vscode.window.activeTextEditor?.document.languageId;
  if (!languageId) {
    void vscode.window.showInformationMessage("Corolla: open a file to turn completions on or off for its language.");
    return;
  }
  const next = toggleLanguage(settings().completions, languageId);
  await vscode.workspace.getConfiguration("corolla").update("completions.enable", next, vscode.ConfigurationTarget.Global);
  status.refresh();
  void vscode.window.setStatusBarMessage(`Corolla completions ${next[languageId] ? "on" : "off"} for ${languageId}`, 3000);
}
