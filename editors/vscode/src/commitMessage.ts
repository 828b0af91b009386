// Corolla: Generate Commit Message — runs /commit on the staged diff in a throwaway session and puts
// the message into the Git view's input box.

import * as vscode from "vscode";
import type { CorollaClient } from "./client";
import { messageOf } from "./editFlow";

interface GitRepository {
  rootUri: vscode.Uri;
  inputBox: { value: string };
}
interface GitApi {
  repositories: GitRepository[];
}

function gitApi(): GitApi | undefined {
  const git = vscode.extensions.getExtension<{ getAPI(version: 1): GitApi }>("vscode.git");
  return git?.isActive ? git.exports.getAPI(1) : undefined;
}

/** Put `text` into the Git input box (of the repository `root`, else the first one). */
export function setCommitMessage(text: string, root?: vscode.Uri): boolean {
  const repos = gitApi()?.repositories ?? [];
  const repo = repos.find((r) => root && r.rootUri.toString() === root.toString()) ?? repos[0];
  if (!repo) return false;
  repo.inputBox.value = text;
  return true;
}

export async function generateCommitMessage(client: CorollaClient, arg?: unknown): Promise<void> {
  const root = arg && typeof arg === "object" && "rootUri" in arg ? (arg as { rootUri: vscode.Uri }).rootUri : undefined;
  const git = vscode.extensions.getExtension("vscode.git");
  if (git && !git.isActive) await git.activate();
  try {
    const message = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.SourceControl, title: "Corolla is writing the commit message…" },
      async () => {
        const session = await client.createSession("commit message");
        try {
          let text = "";
          for await (const event of client.sendMessage(session.id, "/commit", emptyEditor())) {
            if (event.type === "commit_message") text = event.text;
            else if (event.type === "error") throw new Error(event.error.message);
          }
          return text;
        } finally {
          await client.deleteSession(session.id).catch(() => undefined);
        }
      });
    if (!message.trim()) {
      void vscode.window.showWarningMessage("Corolla: the model wrote no commit message.");
    } else if (!setCommitMessage(message, root)) {
      await vscode.env.clipboard.writeText(message);
      void vscode.window.showInformationMessage("Corolla: no Git repository is open; the message was copied.");
    }
  } catch (error) {
    void vscode.window.showErrorMessage(`Corolla: ${messageOf(error)}`);
  }
}

function emptyEditor() {
  return { current_file: null, selection: null, cursor_line: null, open_files: [], buffers: {}, diagnostics: [] };
}
