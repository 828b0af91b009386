// Starting the service: `corolla assistant serve` as a child process for the first workspace folder,
// and, when its model endpoint is the local swarm's and down, offering to start the swarm.

import { spawn, type ChildProcess } from "node:child_process";
import * as vscode from "vscode";
import type { CorollaClient } from "./client";
import { isLocalDefault, isLocalUrl, serviceCommand, swarmCommand, type Settings } from "./settings";
import type { Health } from "./types";
import { workspaceRoot } from "./workspace";

const START_TIMEOUT_MS = 60_000;

export class ServiceManager implements vscode.Disposable {
  private child: ChildProcess | undefined;
  private starting: Promise<Health | undefined> | undefined;
  private readonly output = vscode.window.createOutputChannel("Corolla Service");

  constructor(private readonly settings: () => Settings, private readonly client: () => CorollaClient,
              private readonly onChange: () => void) {}

  dispose(): void {
    this.child?.kill("SIGTERM");
    this.output.dispose();
  }

  /** corolla.startService (and autoStart): start it unless it already answers; then check the model. */
  start(interactive = true): Promise<Health | undefined> {
    this.starting ??= this.doStart(interactive).finally(() => (this.starting = undefined));
    return this.starting;
  }

  private async doStart(interactive: boolean): Promise<Health | undefined> {
    const settings = this.settings();
    let health = await this.client().health().catch(() => undefined);
    if (!health) {
      const folder = workspaceRoot();
      if (!folder) return this.fail("open a folder first: the service works on the first workspace folder.");
      if (!isLocalUrl(settings.serviceUrl)) {
        return this.fail(`corolla.serviceUrl (${settings.serviceUrl}) is not on this machine: start the service there.`);
      }
      health = await this.spawn(settings, folder.fsPath);
      if (!health) return undefined;
    } else if (interactive) {
      void vscode.window.showInformationMessage(`Corolla: the service for ${health.workspace} is already running.`);
    }
    this.onChange();
    if (!health.model_ok) await this.offerSwarm(health, settings);
    return health;
  }

  private async spawn(settings: Settings, workspace: string): Promise<Health | undefined> {
    const { command, args, env } = serviceCommand(settings, workspace);
    this.output.appendLine(`$ ${command} ${args.join(" ")}`);
    const child = spawn(command, args, { cwd: workspace, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    this.child = child;
    let exited: string | undefined;
    child.stdout?.on("data", (b: Buffer) => this.output.append(b.toString()));
    child.stderr?.on("data", (b: Buffer) => this.output.append(b.toString()));
    child.on("error", (e) => (exited = e.message));
    child.on("exit", (code, signal) => {
      exited ??= `it exited (${signal ?? `code ${code}`})`;
      if (this.child === child) this.child = undefined;
      this.output.appendLine(`[the service stopped: ${exited}]`);
      this.onChange();
    });
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (Date.now() < deadline && exited === undefined) {
      const health = await this.client().health().catch(() => undefined);
      if (health) return health;
      await new Promise((r) => setTimeout(r, 500));
    }
    if (exited === undefined) child.kill("SIGTERM");
    this.output.show(true);
    return this.fail(`the service did not start (${exited ?? "no answer within 60 s"}); ` +
                     `check corolla.corollaPath (now "${settings.corollaPath}") and the "Corolla Service" output.`);
  }

  /** The model does not answer: say so, and offer the local swarm when that is the endpoint. */
  async offerSwarm(health: Health, settings = this.settings()): Promise<void> {
    const problem = health.problem ?? `the model endpoint ${health.endpoint} does not answer`;
    if (!isLocalDefault(health.endpoint)) {
      void vscode.window.showWarningMessage(`Corolla: ${problem}. Check corolla.endpoint.`);
      return;
    }
    const choice = await vscode.window.showWarningMessage(
      `Corolla: ${problem}. Start a local swarm serving the model?`, "Start local swarm");
    if (choice === "Start local swarm") {
      const terminal = vscode.window.createTerminal({ name: "Corolla Swarm", cwd: workspaceRoot() });
      terminal.show();
      terminal.sendText(swarmCommand(settings));
    }
  }

  private fail(message: string): undefined {
    void vscode.window.showErrorMessage(`Corolla: ${message}`);
    return undefined;
  }
}
