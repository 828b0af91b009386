// The status-bar item: polls /health every 5 s and says whether the service and its model answer.

import * as vscode from "vscode";
import type { CorollaClient } from "./client";
import { ServiceError } from "./client";
import type { Health } from "./types";

const POLL_MS = 5000;

export type HealthState = { kind: "ok"; health: Health } | { kind: "model-down"; health: Health } | { kind: "down"; problem: string };

export class StatusItem implements vscode.Disposable {
  private readonly item = vscode.window.createStatusBarItem("corolla.status", vscode.StatusBarAlignment.Left, 50);
  private readonly timer: ReturnType<typeof setInterval>;
  private last: HealthState | undefined;

  constructor(private readonly client: () => CorollaClient) {
    this.item.name = "Corolla";
    this.item.text = "$(sync~spin) Corolla";
    this.item.show();
    this.timer = setInterval(() => void this.poll(), POLL_MS);
    void this.poll();
  }

  get state(): HealthState | undefined {
    return this.last;
  }

  dispose(): void {
    clearInterval(this.timer);
    this.item.dispose();
  }

  async poll(): Promise<HealthState> {
    const client = this.client();
    let state: HealthState;
    try {
      const health = await client.health(AbortSignal.timeout(4000));
      state = health.model_ok ? { kind: "ok", health } : { kind: "model-down", health };
    } catch (error) {
      state = { kind: "down", problem: error instanceof ServiceError ? error.message : `${client.baseUrl} does not answer` };
    }
    this.last = state;
    this.show(state, client.baseUrl);
    return state;
  }

  private show(state: HealthState, url: string): void {
    const tip = new vscode.MarkdownString();
    if (state.kind === "ok") {
      this.item.text = `$(check) Corolla: ${state.health.model}`;
      tip.appendText(`Corolla is ready: ${state.health.model} at ${state.health.endpoint}\nworkspace ${state.health.workspace}\nservice ${url}`);
      this.item.command = "corolla.chat.focus";
      this.item.backgroundColor = undefined;
    } else if (state.kind === "model-down") {
      this.item.text = "$(warning) Corolla: model down";
      tip.appendText(`The service answers but its model does not: ${state.health.problem ?? state.health.endpoint}.\n` +
                     "Start the model (click to start a local swarm) or set corolla.endpoint and restart the service.");
      this.item.command = "corolla.showHealth";
      this.item.backgroundColor = new vscode.ThemeColor("statusBarItem.warningBackground");
    } else {
      this.item.text = "$(error) Corolla: service down";
      tip.appendText(`${state.problem}.\nClick to run Corolla: Start Service (corolla assistant serve), ` +
                     "or check corolla.serviceUrl and corolla.token.");
      this.item.command = "corolla.startService";
      this.item.backgroundColor = new vscode.ThemeColor("statusBarItem.errorBackground");
    }
    this.item.tooltip = tip;
  }
}

/** The completions item: on or off for the active editor's language (a click toggles it), busy while a
 * request is in flight, a warning when the service failed. */
export class CompletionsStatus implements vscode.Disposable {
  private readonly item = vscode.window.createStatusBarItem("corolla.completions", vscode.StatusBarAlignment.Right, 100);
  private readonly subscriptions: vscode.Disposable[];
  private busy = false;
  private problem: string | undefined;

  constructor(private readonly enabled: (languageId: string) => boolean) {
    this.item.name = "Corolla Completions";
    this.item.command = "corolla.toggleCompletions";
    this.subscriptions = [
      vscode.window.onDidChangeActiveTextEditor(() => this.refresh()),
      vscode.workspace.onDidChangeConfiguration((e) => {
        if (e.affectsConfiguration("corolla.completions")) this.refresh();
      }),
    ];
    this.refresh();
  }

  dispose(): void {
    for (const s of this.subscriptions) s.dispose();
    this.item.dispose();
  }

  setBusy(busy: boolean): void {
    this.busy = busy;
    this.refresh();
  }

  setProblem(problem: string | undefined): void {
    this.problem = problem;
    this.refresh();
  }

  refresh(): void {
    const editor = vscode.window.activeTextEditor;
    if (!editor) {
      this.item.hide();
      return;
    }
    const language = editor.document.languageId;
    const on = this.enabled(language);
    const icon = !on ? "$(circle-slash)" : this.busy ? "$(loading~spin)" : this.problem ? "$(warning)" : "$(sparkle)";
    this.item.text = `${icon} Completions`;
    const tip = new vscode.MarkdownString();
    tip.appendText(on ? `Corolla completions are on for ${language}: ghost text as you type, Tab accepts, ` +
                        "Ctrl+Right accepts a word. Click to turn them off for this language."
                      : `Corolla completions are off for ${language}. Click to turn them on.`);
    if (on && this.problem) tip.appendText(`\n\nThe last request failed: ${this.problem}`);
    this.item.tooltip = tip;
    this.item.backgroundColor = on && this.problem ? new vscode.ThemeColor("statusBarItem.warningBackground") : undefined;
    this.item.show();
  }
}
