// The `editor` object the service reads, built from plain descriptions of VS Code's state (so that
// it is testable without VS Code; src/editorState.ts fills these in from the real editor).

import * as path from "node:path";
import type { EditorState } from "./types";

export interface PlainDocument {
  fsPath: string;
  text: string;
  dirty: boolean;
}

/** 0-based positions as VS Code has them. */
export interface PlainSelection {
  start: { line: number; character: number };
  end: { line: number; character: number };
  active: { line: number; character: number };
}

export interface PlainDiagnostic {
  fsPath: string;
  line: number; // 0-based
  severity: "error" | "warning" | "info" | "hint";
  message: string;
  source?: string;
}

export interface PlainEditor {
  root: string;
  current?: PlainDocument;
  selection?: PlainSelection;
  documents: PlainDocument[];
  diagnostics: PlainDiagnostic[];
}

export const MAX_BUFFER_CHARS = 200_000;
export const MAX_OPEN_FILES = 50;
export const MAX_DIAGNOSTICS = 50;

/** The workspace-relative path (forward slashes) of `fsPath`, or undefined when it lies outside `root`. */
export function relativePath(root: string, fsPath: string): string | undefined {
  const rel = path.relative(root, fsPath);
  if (!rel || rel.startsWith("..") || path.isAbsolute(rel)) return undefined;
  return rel.split(path.sep).join("/");
}

/** 1-based [first, last] lines of a selection; null when it is empty. A selection that ends at the
 * start of a line does not include that line. */
export function selectionLines(selection: PlainSelection | undefined): [number, number] | null {
  if (!selection) return null;
  const { start, end } = selection;
  if (start.line === end.line && start.character === end.character) return null;
  const last = end.character === 0 && end.line > start.line ? end.line - 1 : end.line;
  return [start.line + 1, last + 1];
}

export function formatDiagnostic(root: string, d: PlainDiagnostic): string {
  const where = relativePath(root, d.fsPath) ?? d.fsPath;
  return `${where}:${d.line + 1}: ${d.severity}: ${d.message}${d.source ? ` (${d.source})` : ""}`;
}

export function buildEditorState(editor: PlainEditor): EditorState {
  const { root } = editor;
  const current = editor.current ? relativePath(root, editor.current.fsPath) ?? null : null;
  const selection = current ? selectionLines(editor.selection) : null;
  const cursor = current && editor.selection ? editor.selection.active.line + 1 : null;
  const open: string[] = [];
  const buffers: Record<string, string> = {};
  for (const doc of editor.documents) {
    const rel = relativePath(root, doc.fsPath);
    if (!rel) continue;
    if (!open.includes(rel) && open.length < MAX_OPEN_FILES) open.push(rel);
    if (doc.dirty && doc.text.length <= MAX_BUFFER_CHARS) buffers[rel] = doc.text;
  }
  if (editor.current?.dirty && current && editor.current.text.length <= MAX_BUFFER_CHARS) {
    buffers[current] = editor.current.text;
  }
  const rank = { error: 0, warning: 1, info: 2, hint: 3 };
  const diagnostics = editor.diagnostics
    .filter((d) => relativePath(root, d.fsPath) !== undefined)
    .sort((a, b) => Number(b.fsPath === editor.current?.fsPath) - Number(a.fsPath === editor.current?.fsPath)
                    || rank[a.severity] - rank[b.severity])
    .slice(0, MAX_DIAGNOSTICS)
    .map((d) => formatDiagnostic(root, d));
  return { current_file: current, selection, cursor_line: cursor, open_files: open, buffers, diagnostics };
}

/** `text` with lines [first, last] (1-based) replaced by `replacement` (used for a code block's Apply). */
export function replaceLines(text: string, lines: [number, number] | null, replacement: string): string {
  if (!lines) return replacement.endsWith("\n") || !text.endsWith("\n") ? replacement : replacement + "\n";
  const eol = text.includes("\r\n") ? "\r\n" : "\n";
  const all = text.split(/\r?\n/);
  const [first, last] = lines;
  const block = replacement.replace(/\r?\n$/, "").split(/\r?\n/);
  return [...all.slice(0, first - 1), ...block, ...all.slice(last)].join(eol);
}
