// VS Code's side of the editor state: the workspace root, the editor the user last worked in, and
// the plain description that src/state.ts turns into the service's `editor` object.

import * as vscode from "vscode";
import { buildEditorState, type PlainDiagnostic, type PlainDocument, type PlainEditor } from "./state";
import type { EditorState } from "./types";

export function workspaceRoot(): vscode.Uri | undefined {
  return vscode.workspace.workspaceFolders?.[0]?.uri;
}

export function fileUri(relative: string): vscode.Uri {
  const root = workspaceRoot();
  if (!root) throw new Error("open a folder first: Corolla works on the first workspace folder");
  return vscode.Uri.joinPath(root, ...relative.split("/"));
}

/** The text editor the user last worked in (a webview or the panel taking focus does not reset it). */
export class EditorTracker implements vscode.Disposable {
  private last: vscode.TextEditor | undefined = usable(vscode.window.activeTextEditor);
  private readonly subscription = vscode.window.onDidChangeActiveTextEditor((e) => {
    if (usable(e)) this.last = e;
  });

  get editor(): vscode.TextEditor | undefined {
    const active = usable(vscode.window.activeTextEditor);
    if (active) return active;
    if (this.last && vscode.window.visibleTextEditors.includes(this.last)) return this.last;
    return vscode.window.visibleTextEditors.find((e) => usable(e));
  }

  dispose(): void {
    this.subscription.dispose();
  }
}

function usable(editor: vscode.TextEditor | undefined): vscode.TextEditor | undefined {
  return editor && (editor.document.uri.scheme === "file" || editor.document.uri.scheme === "untitled")
    ? editor : undefined;
}

const SEVERITY: Record<number, PlainDiagnostic["severity"]> = { 0: "error", 1: "warning", 2: "info", 3: "hint" };

function plainDocument(doc: vscode.TextDocument): PlainDocument {
  return { fsPath: doc.uri.fsPath, text: doc.getText(), dirty: doc.isDirty };
}

/** The `editor` object for the service from `editor` (and the open documents and diagnostics). */
export function editorState(editor: vscode.TextEditor | undefined, extraDiagnostics: string[] = []): EditorState {
  const root = workspaceRoot()?.fsPath ?? "";
  const plain: PlainEditor = {
    root,
    documents: vscode.workspace.textDocuments.filter((d) => d.uri.scheme === "file").map(plainDocument),
    diagnostics: [],
  };
  if (editor && editor.document.uri.scheme === "file") {
    plain.current = plainDocument(editor.document);
    const s = editor.selection;
    plain.selection = { start: s.start, end: s.end, active: s.active };
  }
  for (const [uri, diagnostics] of vscode.languages.getDiagnostics()) {
    if (uri.scheme !== "file") continue;
    for (const d of diagnostics) {
      plain.diagnostics.push({ fsPath: uri.fsPath, line: d.range.start.line, severity: SEVERITY[d.severity] ?? "info",
                               message: d.message, ...(d.source ? { source: d.source } : {}) });
    }
  }
  const state = buildEditorState(plain);
  for (const d of extraDiagnostics) if (!state.diagnostics.includes(d)) state.diagnostics.unshift(d);
  return state;
}
