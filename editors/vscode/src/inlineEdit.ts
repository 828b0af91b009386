// Inline edits in VS Code: ask for a change (Ctrl+I), preview the proposal as a diff against a
// read-only "corolla-proposal" document, then Accept (Tab) or Discard (Esc). The state machine is
// src/editFlow.ts; this is its VS Code host.

import * as vscode from "vscode";
import type { CorollaClient } from "./client";
import { EditFlow, messageOf, type EditHost, type Proposal } from "./editFlow";
import { relativePath, replaceLines, selectionLines } from "./state";
import type { EditProposal } from "./types";
import { editorState, fileUri, workspaceRoot, type EditorTracker } from "./workspace";

export const SCHEME = "corolla-proposal";
export const DIFF_TITLE = "Corolla: proposed edit (Tab to accept, Esc to discard)";
const PENDING_KEY = "corolla.editPending";

/** The read-only documents holding each proposal's before/after texts. */
class ProposalDocuments implements vscode.TextDocumentContentProvider {
  private readonly texts = new Map<string, string>();
  private counter = 0;

  add(proposal: Proposal, existing: Set<string>): { key: string; uris: { left: vscode.Uri; right: vscode.Uri }[] } {
    const key = proposal.editId ?? `local-${++this.counter}`;
    const uris = proposal.changes.map((change) => {
      const base = vscode.Uri.from({ scheme: SCHEME, path: "/" + change.path });
      const right = base.with({ query: `edit=${key}&side=after` });
      this.texts.set(right.toString(), change.after);
      let left: vscode.Uri;
      if (!existing.has(change.path)) {
        left = base.with({ query: `edit=${key}&side=before` });
        this.texts.set(left.toString(), "");
      } else {
        left = fileUri(change.path);
      }
      return { left, right };
    });
    return { key, uris };
  }

  remove(key: string): void {
    for (const uri of [...this.texts.keys()]) {
      if (vscode.Uri.parse(uri).query.startsWith(`edit=${key}&`)) this.texts.delete(uri);
    }
  }

  provideTextDocumentContent(uri: vscode.Uri): string {
    return this.texts.get(uri.toString()) ?? "";
  }
}

/** Which of `paths` (workspace-relative) exist on disk. */
async function existingFiles(paths: string[]): Promise<Set<string>> {
  const found = new Set<string>();
  for (const p of paths) {
    try {
      await vscode.workspace.fs.stat(fileUri(p));
      found.add(p);
    } catch {
      // a new file
    }
  }
  return found;
}

const normalize = (text: string) => text.replace(/\r\n/g, "\n");

export class InlineEdits implements EditHost, vscode.Disposable {
  readonly flow = new EditFlow(this);
  private readonly documents = new ProposalDocuments();
  private readonly keys = new WeakMap<Proposal, string>();
  private readonly registration: vscode.Disposable;

  constructor(private readonly client: () => CorollaClient, private readonly tracker: EditorTracker) {
    this.registration = vscode.workspace.registerTextDocumentContentProvider(SCHEME, this.documents);
  }

  dispose(): void {
    this.registration.dispose();
  }

  // --- commands -------------------------------------------------------------------------------
  /** corolla.inlineEdit: ask for a change of the selection (or around the cursor) and preview it. */
  async inlineEdit(): Promise<void> {
    const editor = this.tracker.editor;
    if (!editor || editor.document.uri.scheme !== "file") {
      void vscode.window.showErrorMessage("Corolla: open a file of the workspace to edit it.");
      return;
    }
    const instruction = await vscode.window.showInputBox({
      title: "Corolla: Inline Edit", placeHolder: "Describe the change", ignoreFocusOut: true,
    });
    if (!instruction?.trim()) return;
    const state = editorState(editor);
    if (!state.current_file) {
      void vscode.window.showErrorMessage("Corolla: the file is outside the workspace folder.");
      return;
    }
    let result: EditProposal;
    try {
      result = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: "Corolla is editing…", cancellable: true },
        (_progress, token) => {
          const abort = new AbortController();
          token.onCancellationRequested(() => abort.abort());
          return this.client().proposeEdit(instruction.trim(), state, abort.signal);
        });
    } catch (error) {
      if (!(error instanceof Error && error.name === "AbortError")) {
        void vscode.window.showErrorMessage(`Corolla: ${messageOf(error)}`);
      }
      return;
    }
    await this.offerService(result);
  }

  /** A proposal from the service (POST /edits, or a chat command's `edit` event). */
  async offerService(result: EditProposal): Promise<void> {
    await this.flow.offer({ editId: result.edit_id, changes: result.changes ?? [], notes: result.notes ?? [] });
  }

  /** A chat code block's Apply: the block becomes the new text of the selection (the whole file
   * when nothing is selected), previewed like any proposal; nothing is sent to the service. */
  async applyText(text: string): Promise<void> {
    const editor = this.tracker.editor;
    const root = workspaceRoot()?.fsPath;
    const path = editor && root ? relativePath(root, editor.document.uri.fsPath) : undefined;
    if (!editor || !path || editor.document.uri.scheme !== "file") {
      void vscode.window.showErrorMessage("Corolla: open the workspace file to apply the code to.");
      return;
    }
    const before = editor.document.getText();
    const after = replaceLines(before, selectionLines(editor.selection), text);
    await this.flow.offer({ editId: null, changes: [{ path, before, after }], notes: [] });
  }

  // --- EditHost -------------------------------------------------------------------------------
  async preview(proposal: Proposal): Promise<void> {
    const existing = await existingFiles(proposal.changes.map((c) => c.path));
    const { key, uris } = this.documents.add(proposal, existing);
    this.keys.set(proposal, key);
    for (const { left, right } of uris) {
      await vscode.commands.executeCommand("vscode.diff", left, right, DIFF_TITLE, { preview: false });
    }
    const files = proposal.changes.map((c) => c.path).join(", ");
    const notes = proposal.notes.length ? ` ${proposal.notes.join(" ")}` : "";
    void vscode.window.showInformationMessage(`Corolla proposes a change to ${files}.${notes}`, "Accept", "Discard")
      .then((choice) => {
        if (choice === "Accept") void this.flow.accept(proposal);
        else if (choice === "Discard") void this.flow.discard(proposal);
      });
  }

  async close(proposal: Proposal): Promise<void> {
    const key = this.keys.get(proposal);
    const tabs = vscode.window.tabGroups.all.flatMap((g) => g.tabs).filter((tab) =>
      tab.input instanceof vscode.TabInputTextDiff && tab.input.modified.scheme === SCHEME
      && (!key || tab.input.modified.query.startsWith(`edit=${key}&`)));
    if (tabs.length) await vscode.window.tabGroups.close(tabs);
    if (key) this.documents.remove(key);
  }

  async apply(proposal: Proposal): Promise<void> {
    const existing = await existingFiles(proposal.changes.map((c) => c.path));
    const edit = new vscode.WorkspaceEdit();
    const uris: vscode.Uri[] = [];
    for (const change of proposal.changes) {
      const uri = fileUri(change.path);
      uris.push(uri);
      if (!existing.has(change.path)) {
        edit.createFile(uri, { ignoreIfExists: true });
        edit.insert(uri, new vscode.Position(0, 0), change.after);
        continue;
      }
      if (change.before === null) throw new Error(`${change.path} was created since the edit was proposed; ask again`);
      const doc = await vscode.workspace.openTextDocument(uri);
      if (normalize(doc.getText()) !== normalize(change.before)) {
        throw new Error(`${change.path} changed since the edit was proposed; ask again`);
      }
      edit.replace(uri, new vscode.Range(0, 0, doc.lineCount, 0), change.after);
    }
    if (!(await vscode.workspace.applyEdit(edit))) throw new Error("VS Code refused the edit");
    for (const uri of uris) {
      const doc = await vscode.workspace.openTextDocument(uri);
      if (doc.isDirty && !(await doc.save())) throw new Error(`could not save ${vscode.workspace.asRelativePath(uri)}`);
    }
    const created = proposal.changes.filter((c) => !existing.has(c.path));
    if (created.length) await vscode.window.showTextDocument(fileUri(created[0]!.path), { preview: false });
  }

  accept(editId: string): Promise<unknown> {
    return this.client().acceptEdit(editId);
  }

  reject(editId: string): Promise<unknown> {
    return this.client().rejectEdit(editId);
  }

  setPending(pending: boolean): void {
    void vscode.commands.executeCommand("setContext", PENDING_KEY, pending);
  }

  error(message: string): void {
    void vscode.window.showErrorMessage(message);
  }

  info(message: string): void {
    void vscode.window.showInformationMessage(message);
  }
}
