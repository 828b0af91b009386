// Code actions: "Corolla: Fix" as a quick fix for each diagnostic, and Explain / Generate Tests /
// Generate Docs as refactorings. Each runs its slash command in the Chat view.

import * as vscode from "vscode";
import { formatDiagnostic } from "./state";
import { workspaceRoot } from "./workspace";

export interface ActionArgs {
  uri?: string;
  diagnostic?: string;
}

export const SLASH: Record<string, string> = {
  "corolla.explain": "/explain",
  "corolla.fix": "/fix",
  "corolla.generateTests": "/tests",
  "corolla.generateDocs": "/doc",
};

const KIND = vscode.CodeActionKind.Refactor.append("corolla");
const REFACTORS: [string, string][] = [
  ["Corolla: Explain", "corolla.explain"],
  ["Corolla: Generate Tests", "corolla.generateTests"],
  ["Corolla: Generate Docs", "corolla.generateDocs"],
];

export class CorollaCodeActions implements vscode.CodeActionProvider {
  static readonly metadata: vscode.CodeActionProviderMetadata = {
    providedCodeActionKinds: [vscode.CodeActionKind.QuickFix, KIND],
  };

  provideCodeActions(document: vscode.TextDocument, _range: vscode.Range | vscode.Selection,
                     context: vscode.CodeActionContext): vscode.CodeAction[] {
    if (document.uri.scheme !== "file") return [];
    const actions: vscode.CodeAction[] = [];
    const wants = (kind: vscode.CodeActionKind) => !context.only || context.only.contains(kind) || kind.contains(context.only);
    if (wants(vscode.CodeActionKind.QuickFix)) {
      for (const d of context.diagnostics) {
        const action = new vscode.CodeAction("Corolla: Fix", vscode.CodeActionKind.QuickFix);
        action.diagnostics = [d];
        const severity = (["error", "warning", "info", "hint"] as const)[d.severity] ?? "error";
        const text = formatDiagnostic(workspaceRoot()?.fsPath ?? "", {
          fsPath: document.uri.fsPath, line: d.range.start.line, severity, message: d.message,
          ...(d.source ? { source: d.source } : {}),
        });
        const args: ActionArgs = { uri: document.uri.toString(), diagnostic: text };
        action.command = { command: "corolla.fix", title: "Corolla: Fix", arguments: [args] };
        actions.push(action);
      }
    }
    if (wants(KIND)) {
      for (const [title, command] of REFACTORS) {
        const action = new vscode.CodeAction(title, KIND);
        action.command = { command, title, arguments: [{ uri: document.uri.toString() } satisfies ActionArgs] };
        actions.push(action);
      }
    }
    return actions;
  }
}

/** The chat text for a command: its slash command, plus the diagnostic a quick fix was for. */
export function commandText(command: string, args: unknown): string {
  const slash = SLASH[command] ?? "/explain";
  const diagnostic = args && typeof args === "object" && "diagnostic" in args ? (args as ActionArgs).diagnostic : undefined;
  return diagnostic ? `${slash} ${diagnostic}` : slash;
}
