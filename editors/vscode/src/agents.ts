// The Agents view: background agents in their own worktrees (GET /agents every 3 s while visible),
// with commands to start one, follow its log, review its diff, and apply, discard or stop it.

import * as vscode from "vscode";
import { agentLabel, formatAgentEvent } from "./agentLog";
import { isAbort, type CorollaClient } from "./client";
import { messageOf } from "./editFlow";
import type { Agent } from "./types";

const POLL_MS = 3000;
const DIFF_SCHEME = "corolla-agent";

class AgentItem extends vscode.TreeItem {
  constructor(readonly agent: Agent) {
    super(agentLabel(agent), vscode.TreeItemCollapsibleState.None);
    this.id = agent.id;
    this.contextValue = `agent-${agent.status ?? "unknown"}`;
    this.description = agent.id;
    this.tooltip = new vscode.MarkdownString().appendText(`${agent.task ?? ""}\n\nstatus: ${agent.status ?? "?"}` +
      (agent.error ? `\nerror: ${agent.error}` : "") + (agent.report_text ? `\n\n${agent.report_text}` : ""));
    this.iconPath = new vscode.ThemeIcon(ICONS[agent.status ?? ""] ?? "circle-outline");
    this.command = { command: "corolla.agentShowLog", title: "Corolla: Show Agent Log", arguments: [this] };
  }
}

const ICONS: Record<string, string> = {
  queued: "clock", running: "sync~spin", done: "pass", failed: "error", stopped: "debug-stop",
  applied: "check-all", discarded: "trash",
};

export class Agents implements vscode.TreeDataProvider<AgentItem>, vscode.TextDocumentContentProvider, vscode.Disposable {
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChangeTreeData = this.changed.event;
  private readonly diffChanged = new vscode.EventEmitter<vscode.Uri>();
  readonly onDidChange = this.diffChanged.event;
  private items: AgentItem[] = [];
  private shown: string | undefined; // what the tree shows now, to redraw it only when that changes
  private timer: ReturnType<typeof setInterval> | undefined;
  private readonly logs = new Map<string, { channel: vscode.OutputChannel; abort: AbortController | null; after: number }>();
  private readonly diffs = new Map<string, string>();
  private readonly disposables: vscode.Disposable[] = [];
  private readonly view: vscode.TreeView<AgentItem>;

  constructor(private readonly client: () => CorollaClient) {
    this.view = vscode.window.createTreeView("corolla.agents", { treeDataProvider: this, showCollapseAll: false });
    this.disposables.push(
      this.view,
      this.view.onDidChangeVisibility((e) => (e.visible ? this.startPolling() : this.stopPolling())),
      vscode.workspace.registerTextDocumentContentProvider(DIFF_SCHEME, this),
    );
    if (this.view.visible) this.startPolling();
  }

  dispose(): void {
    this.stopPolling();
    for (const log of this.logs.values()) {
      log.abort?.abort();
      log.channel.dispose();
    }
    for (const d of this.disposables) d.dispose();
    this.changed.dispose();
    this.diffChanged.dispose();
  }

  // --- the tree -------------------------------------------------------------------------------
  getTreeItem(item: AgentItem): vscode.TreeItem {
    return item;
  }

  getChildren(): AgentItem[] {
    return this.items;
  }

  /** Poll the service; redraw only when something changed (a redraw closes an open context menu). */
  async refresh(): Promise<void> {
    let agents: Agent[] = [];
    let problem: string | undefined;
    try {
      agents = await this.client().agents();
    } catch (error) {
      problem = messageOf(error);
    }
    const shown = JSON.stringify([agents, problem ?? null]);
    if (shown === this.shown) return;
    this.shown = shown;
    this.items = agents.map((a) => new AgentItem(a));
    this.view.message = problem ? `Corolla: ${problem}`
      : agents.length ? undefined : "No agents yet: start one with Corolla: Start Agent.";
    this.changed.fire();
  }

  private startPolling(): void {
    if (this.timer) return;
    void this.refresh();
    this.timer = setInterval(() => void this.refresh(), POLL_MS);
  }

  private stopPolling(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  // --- commands -------------------------------------------------------------------------------
  async start(): Promise<void> {
    const task = await vscode.window.showInputBox({
      title: "Corolla: Start Agent", placeHolder: "Describe the task for the agent", ignoreFocusOut: true,
    });
    if (!task?.trim()) return;
    try {
      const agent = await this.client().startAgent(task.trim());
      await this.refresh();
      this.showLog(agent.id);
    } catch (error) {
      void vscode.window.showErrorMessage(`Corolla: ${messageOf(error)}`);
    }
  }

  /** Follow the agent's events in its output channel. */
  showLog(id: string): void {
    let log = this.logs.get(id);
    if (!log) {
      log = { channel: vscode.window.createOutputChannel(`Corolla Agent ${id}`), abort: null, after: 0 };
      this.logs.set(id, log);
    }
    log.channel.show(true);
    if (!log.abort) void this.follow(id, log);
  }

  private async follow(id: string, log: { channel: vscode.OutputChannel; abort: AbortController | null; after: number }) {
    const abort = (log.abort = new AbortController());
    try {
      for await (const event of this.client().agentEvents(id, log.after, abort.signal)) {
        if (event.seq !== undefined) log.after = event.seq;
        log.channel.appendLine(formatAgentEvent(event));
        if (event.type === "end") void this.refresh();
      }
    } catch (error) {
      if (!isAbort(error)) log.channel.appendLine(`(log unavailable: ${messageOf(error)})`);
    } finally {
      log.abort = null;
    }
  }

  async reviewDiff(id: string): Promise<void> {
    try {
      const agent = await this.client().agent(id);
      const uri = vscode.Uri.from({ scheme: DIFF_SCHEME, path: `/agent-${id}.diff` });
      this.diffs.set(uri.toString(), agent.diff || `# agent ${id} (${agent.status ?? "?"}) has no changes yet\n`);
      this.diffChanged.fire(uri);
      const doc = await vscode.workspace.openTextDocument(uri);
      await vscode.languages.setTextDocumentLanguage(doc, "diff");
      await vscode.window.showTextDocument(doc, { preview: false });
    } catch (error) {
      void vscode.window.showErrorMessage(`Corolla: ${messageOf(error)}`);
    }
  }

  provideTextDocumentContent(uri: vscode.Uri): string {
    return this.diffs.get(uri.toString()) ?? "";
  }

  async act(id: string, action: "apply" | "discard" | "stop"): Promise<void> {
    if (action === "discard") {
      const ok = await vscode.window.showWarningMessage(`Discard agent ${id}'s work?`, { modal: true }, "Discard");
      if (ok !== "Discard") return;
    }
    try {
      const result = await this.client().agentAction(id, action);
      const files = Array.isArray(result.files) ? result.files as string[]
        : Array.isArray(result.applied_files) ? result.applied_files as string[] : [];
      const done = { apply: "applied", discard: "discarded", stop: "stopped" }[action];
      void vscode.window.showInformationMessage(
        `Corolla: agent ${id} ${done}${files.length ? `: ${files.join(", ")}` : ""}.`);
    } catch (error) {
      void vscode.window.showErrorMessage(`Corolla: ${messageOf(error)}`);
    }
    await this.refresh();
  }

  /** The agent a command is for: the clicked item, else one picked from the list. */
  async pick(arg: unknown): Promise<string | undefined> {
    if (arg instanceof AgentItem) return arg.agent.id;
    if (typeof arg === "string") return arg;
    let agents: Agent[];
    try {
      agents = await this.client().agents();
    } catch (error) {
      void vscode.window.showErrorMessage(`Corolla: ${messageOf(error)}`);
      return undefined;
    }
    if (!agents.length) {
      void vscode.window.showInformationMessage("Corolla: there are no agents.");
      return undefined;
    }
    const choice = await vscode.window.showQuickPick(
      agents.map((a) => ({ label: agentLabel(a), description: a.id, id: a.id })), { title: "Corolla: which agent?" });
    return choice?.id;
  }
}
