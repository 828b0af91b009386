// Completions as you type: ghost text from the service's POST /completions (fill-in-the-middle on the
// swarm). The engine debounces, cancels the request in flight when VS Code cancels (the user typed on:
// aborting the fetch closes the connection, and the service then stops the generation and frees its
// server sessions), and keeps an LRU cache: the same position again, or characters typed that match the
// start of a completion, are answered without asking. Tab accepts (VS Code's own inline suggestions),
// Ctrl+→ accepts a word (VS Code binds editor.action.inlineSuggest.acceptNextWord to it).
//
// Only VS Code's *types* are imported: the provider gets the `vscode` module from src/extension.ts, so the
// unit tests run all of this under plain Node with a fake.

import type * as vscode from "vscode";
import { isAbort, type CompletionBody, type CompletionResult } from "./client";
import { relativePath } from "./state";

/** What the service is asked for: one document at one cursor position. */
export interface CompletionQuery {
  uri: string;
  languageId: string;
  /** workspace-relative, null for an untitled document or one outside the workspace */
  path: string | null;
  prefix: string;
  suffix: string;
  openFiles: string[];
  /** unsaved texts of the other open files, by path */
  buffers: Record<string, string>;
}

export const MAX_PREFIX_CHARS = 100_000; // the service takes 200,000 a side; it keeps only windows anyway
export const MAX_SUFFIX_CHARS = 50_000;
export const MAX_BUFFER_CHARS = 100_000;
const FINGERPRINT_CHARS = 400; // of the text on each side of the cursor, in a cache key

export function completionBody(q: CompletionQuery): CompletionBody {
  return {
    prefix: q.prefix.length > MAX_PREFIX_CHARS ? q.prefix.slice(-MAX_PREFIX_CHARS) : q.prefix,
    suffix: q.suffix.slice(0, MAX_SUFFIX_CHARS),
    path: q.path,
    language: q.languageId,
    open_files: q.openFiles,
    buffers: q.buffers,
  };
}

interface Entry {
  uri: string;
  prefixLength: number;
  prefixTail: string;
  suffixLength: number;
  suffixHead: string;
  text: string;
}

/** Recent completions by position; a hit also when the user has typed the start of one since. */
export class CompletionCache {
  private readonly entries: Entry[] = []; // oldest first

  constructor(readonly size = 64) {}

  get length(): number {
    return this.entries.length;
  }

  /** The completion for `q` ("" when the service had none there), or undefined when nothing is known. */
  lookup(q: CompletionQuery): string | undefined {
    const suffixHead = q.suffix.slice(0, FINGERPRINT_CHARS);
    for (let i = this.entries.length - 1; i >= 0; i--) {
      const e = this.entries[i]!;
      if (e.uri !== q.uri || e.suffixLength !== q.suffix.length || e.suffixHead !== suffixHead) continue;
      const typed = q.prefix.length - e.prefixLength;
      if (typed < 0 || typed > e.text.length) continue;
      if (q.prefix.slice(e.prefixLength - e.prefixTail.length, e.prefixLength) !== e.prefixTail) continue;
      if (typed === 0) return e.text;
      const more = q.prefix.slice(e.prefixLength);
      if (e.text.startsWith(more) && e.text.length > more.length) return e.text.slice(more.length);
    }
    return undefined;
  }

  store(q: CompletionQuery, text: string): void {
    const entry: Entry = {
      uri: q.uri, prefixLength: q.prefix.length, prefixTail: q.prefix.slice(-FINGERPRINT_CHARS),
      suffixLength: q.suffix.length, suffixHead: q.suffix.slice(0, FINGERPRINT_CHARS), text,
    };
    const same = this.entries.findIndex((e) => e.uri === entry.uri && e.prefixLength === entry.prefixLength &&
      e.prefixTail === entry.prefixTail && e.suffixLength === entry.suffixLength && e.suffixHead === entry.suffixHead);
    if (same >= 0) this.entries.splice(same, 1);
    this.entries.push(entry);
    while (this.entries.length > this.size) this.entries.shift();
  }

  clear(): void {
    this.entries.length = 0;
  }
}

export interface EngineOptions {
  request: (body: CompletionBody, signal: AbortSignal) => Promise<CompletionResult>;
  debounceMs: () => number;
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  now?: () => number;
  /** a request went out (true) / none is in flight any more (false) */
  onBusy?: (busy: boolean) => void;
  /** the service failed (not a cancellation): requests pause for `errorPauseMs`; undefined: it answers again */
  onProblem?: (message: string | undefined) => void;
  errorPauseMs?: number;
  cacheSize?: number;
}

/** Resolves after `ms`, or at once when `signal` aborts. */
export function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (ms <= 0 || signal.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

const NOT_KEPT = new Set(["cancelled", "superseded"]); // the service gave up: nothing to remember

export class CompletionEngine {
  readonly cache: CompletionCache;
  private inFlight = 0;
  private pausedUntil = 0;
  private problem: string | undefined;
  private readonly sleep: (ms: number, signal: AbortSignal) => Promise<void>;
  private readonly now: () => number;

  constructor(private readonly options: EngineOptions) {
    this.cache = new CompletionCache(options.cacheSize ?? 64);
    this.sleep = options.sleep ?? abortableSleep;
    this.now = options.now ?? Date.now;
  }

  /** The ghost text for `q`, or undefined (none, cancelled, or the service failed). */
  async provide(q: CompletionQuery, signal: AbortSignal): Promise<string | undefined> {
    const cached = this.cache.lookup(q);
    if (cached !== undefined) return cached || undefined;
    if (this.now() < this.pausedUntil) return undefined;
    await this.sleep(this.options.debounceMs(), signal);
    if (signal.aborted) return undefined; // typed on during the debounce: never asked
    this.busy(+1);
    try {
      const result = await this.options.request(completionBody(q), signal);
      this.setProblem(undefined);
      if (!NOT_KEPT.has(result.finish_reason)) this.cache.store(q, result.completion);
      return signal.aborted ? undefined : result.completion || undefined;
    } catch (error) {
      if (signal.aborted || isAbort(error)) return undefined;
      this.pausedUntil = this.now() + (this.options.errorPauseMs ?? 30_000);
      this.setProblem(error instanceof Error ? error.message : String(error));
      return undefined;
    } finally {
      this.busy(-1);
    }
  }

  /** Ask again at once after a failure (the settings changed, the service was started). */
  resume(): void {
    this.pausedUntil = 0;
    this.setProblem(undefined);
  }

  private busy(delta: number): void {
    const before = this.inFlight;
    this.inFlight += delta;
    if ((before === 0) !== (this.inFlight === 0)) this.options.onBusy?.(this.inFlight > 0);
  }

  private setProblem(problem: string | undefined): void {
    if (problem === this.problem) return;
    this.problem = problem;
    this.options.onProblem?.(problem);
  }
}

// --- VS Code's side ----------------------------------------------------------------------------------
/** What the provider needs of the `vscode` module (the real one, or a fake in the tests). */
export type VsCodeApi = {
  InlineCompletionItem: typeof vscode.InlineCompletionItem;
  Range: typeof vscode.Range;
  workspace: { textDocuments: readonly vscode.TextDocument[] };
};

/** The query for `document` at `position`, with the workspace's open files (unsaved ones with their text). */
export function queryAt(vs: VsCodeApi, root: string | undefined, document: vscode.TextDocument,
                        position: vscode.Position): CompletionQuery {
  const text = document.getText();
  const offset = document.offsetAt(position);
  const path = root && document.uri.scheme === "file" ? relativePath(root, document.uri.fsPath) ?? null : null;
  const openFiles: string[] = [];
  const buffers: Record<string, string> = {};
  for (const doc of vs.workspace.textDocuments) {
    if (doc.uri.scheme !== "file" || !root || doc === document) continue;
    const rel = relativePath(root, doc.uri.fsPath);
    if (!rel || openFiles.includes(rel)) continue;
    openFiles.push(rel);
    if (doc.isDirty && doc.getText().length <= MAX_BUFFER_CHARS) buffers[rel] = doc.getText();
  }
  return { uri: document.uri.toString(), languageId: document.languageId, path, prefix: text.slice(0, offset),
           suffix: text.slice(offset), openFiles, buffers };
}

/** VS Code's inline completion provider over the engine. */
export class InlineCompletions implements vscode.InlineCompletionItemProvider {
  constructor(private readonly vs: VsCodeApi, readonly engine: CompletionEngine,
              private readonly enabled: (languageId: string) => boolean,
              private readonly root: () => string | undefined) {}

  async provideInlineCompletionItems(document: vscode.TextDocument, position: vscode.Position,
                                     context: vscode.InlineCompletionContext,
                                     token: vscode.CancellationToken): Promise<vscode.InlineCompletionItem[] | undefined> {
    if (!this.enabled(document.languageId)) return undefined;
    if (context.selectedCompletionInfo) return undefined; // the suggest widget is open: its item comes first
    const controller = new AbortController();
    const subscription = token.onCancellationRequested(() => controller.abort());
    if (token.isCancellationRequested) controller.abort();
    try {
      const text = await this.engine.provide(queryAt(this.vs, this.root(), document, position), controller.signal);
      if (!text || token.isCancellationRequested) return undefined;
      return [new this.vs.InlineCompletionItem(text, new this.vs.Range(position, position))];
    } finally {
      subscription.dispose();
    }
  }
}
