import assert from "node:assert/strict";
import { test } from "node:test";
import type { CompletionBody, CompletionResult } from "../src/client";
import { ServiceError } from "../src/client";
import {
  abortableSleep, completionBody, CompletionCache, CompletionEngine, InlineCompletions, MAX_PREFIX_CHARS, queryAt,
  type CompletionQuery, type VsCodeApi,
} from "../src/completions";
import { completionsEnabled, COMPLETIONS_DEFAULT, debounceOf, toggleLanguage } from "../src/settings";

const query = (prefix: string, suffix = "\n", uri = "file:///w/app.py"): CompletionQuery => ({
  uri, languageId: "python", path: "app.py", prefix, suffix, openFiles: ["util.py"], buffers: {},
});

const result = (completion: string, finish_reason = "stop"): CompletionResult => ({
  completion, multiline: false, reason: "one line", finish_reason, prompt_tokens: 10, snippets: [], cached: false,
  first_token_s: 0.1, total_s: 0.2,
});

test("the cache answers the same position, and the rest of a completion whose start was typed", () => {
  const cache = new CompletionCache(3);
  cache.store(query("x = "), "compute(a, b)");
  assert.equal(cache.lookup(query("x = ")), "compute(a, b)");
  assert.equal(cache.lookup(query("x = comp")), "ute(a, b)"); // typed "comp": the rest
  assert.equal(cache.lookup(query("x = compute(a, b)")), undefined); // all of it typed: nothing left
  assert.equal(cache.lookup(query("x = cop")), undefined); // typed something else
  assert.equal(cache.lookup(query("x = ", "\nmore\n")), undefined); // the text after the cursor changed
  assert.equal(cache.lookup(query("y = ")), undefined);
  assert.equal(cache.lookup(query("x = ", "\n", "file:///w/other.py")), undefined);
  cache.store(query("a"), "");
  assert.equal(cache.lookup(query("a")), ""); // "no completion here" is remembered too
  cache.store(query("b"), "1");
  cache.store(query("c"), "2");
  assert.equal(cache.length, 3);
  assert.equal(cache.lookup(query("x = ")), undefined); // the oldest went
});

test("the request body cuts a huge prefix and suffix to their ends near the cursor", () => {
  const body = completionBody({ ...query("a".repeat(MAX_PREFIX_CHARS + 10) + "x = "), suffix: "b".repeat(200_000) });
  assert.equal(body.prefix.length, MAX_PREFIX_CHARS);
  assert.ok(body.prefix.endsWith("x = "));
  assert.equal(body.suffix.length, 50_000);
  assert.deepEqual({ ...body, prefix: "", suffix: "" },
                   { prefix: "", suffix: "", path: "app.py", language: "python", open_files: ["util.py"], buffers: {} });
});

interface Call {
  body: CompletionBody;
  signal: AbortSignal;
}

function engineWith(answer: (call: Call) => Promise<CompletionResult>, now = () => 0) {
  const calls: Call[] = [];
  const busy: boolean[] = [];
  const problems: (string | undefined)[] = [];
  const engine = new CompletionEngine({
    request: (body, signal) => {
      const call = { body, signal };
      calls.push(call);
      return answer(call);
    },
    debounceMs: () => 5,
    now,
    onBusy: (b) => busy.push(b),
    onProblem: (p) => problems.push(p),
    errorPauseMs: 1000,
  });
  return { engine, calls, busy, problems };
}

test("a completion is asked once, then served from the cache", async () => {
  const { engine, calls, busy } = engineWith(async () => result("a + b"));
  assert.equal(await engine.provide(query("return "), new AbortController().signal), "a + b");
  assert.equal(await engine.provide(query("return a"), new AbortController().signal), " + b");
  assert.equal(calls.length, 1);
  assert.equal(calls[0]!.body.prefix, "return ");
  assert.deepEqual(busy, [true, false]);
});

test("typing during the debounce never asks; typing while it is asked aborts the request", async () => {
  const { engine, calls } = engineWith((call) => new Promise((_, reject) => {
    call.signal.addEventListener("abort", () => reject(Object.assign(new Error("aborted"), { name: "AbortError" })));
  }));
  const early = new AbortController();
  const first = engine.provide(query("x"), early.signal);
  early.abort();
  assert.equal(await first, undefined);
  assert.equal(calls.length, 0);

  const late = new AbortController();
  const second = engine.provide(query("y"), late.signal);
  while (calls.length === 0) await new Promise((r) => setTimeout(r, 1));
  assert.equal(calls[0]!.signal.aborted, false);
  late.abort(); // VS Code cancelled: the fetch's signal aborts, so its connection closes
  assert.equal(calls[0]!.signal.aborted, true);
  assert.equal(await second, undefined);
  assert.equal(engine.cache.length, 0);
});

test("answers the service gave up on are not cached; failures pause requests and say why", async () => {
  let clock = 0;
  let answer: () => Promise<CompletionResult> = async () => result("", "superseded");
  const { engine, calls, problems } = engineWith(() => answer(), () => clock);
  assert.equal(await engine.provide(query("a"), new AbortController().signal), undefined);
  assert.equal(engine.cache.length, 0);
  answer = async () => {
    throw new ServiceError(503, "EndpointError", "the model endpoint is down");
  };
  assert.equal(await engine.provide(query("b"), new AbortController().signal), undefined);
  assert.deepEqual(problems, ["the model endpoint is down"]);
  assert.equal(await engine.provide(query("c"), new AbortController().signal), undefined);
  assert.equal(calls.length, 2); // paused
  clock = 2000;
  answer = async () => result("1");
  assert.equal(await engine.provide(query("d"), new AbortController().signal), "1");
  assert.deepEqual(problems, ["the model endpoint is down", undefined]);
  answer = async () => {
    throw new ServiceError(0, "Unreachable", "down");
  };
  await engine.provide(query("e"), new AbortController().signal);
  engine.resume(); // e.g. the service was started
  answer = async () => result("2");
  assert.equal(await engine.provide(query("f"), new AbortController().signal), "2");
});

test("abortableSleep ends early on abort", async () => {
  const controller = new AbortController();
  const start = Date.now();
  const sleeping = abortableSleep(10_000, controller.signal);
  controller.abort();
  await sleeping;
  assert.ok(Date.now() - start < 1000);
});

test("completions are on per language, '*' for the rest; the toggle flips one language", () => {
  assert.ok(completionsEnabled(undefined, "python"));
  assert.ok(!completionsEnabled(undefined, "markdown"));
  assert.ok(completionsEnabled({ python: true }, "go")); // neither the language nor "*": on
  assert.ok(!completionsEnabled({ "*": false, python: true }, "go"));
  assert.ok(!completionsEnabled({ constructor: false }, "constructor"));
  assert.deepEqual(toggleLanguage(undefined, "python"), { ...COMPLETIONS_DEFAULT, python: false });
  assert.deepEqual(toggleLanguage({ "*": true, python: false }, "python"), { "*": true, python: true });
  assert.deepEqual(toggleLanguage({ "*": false }, "rust"), { "*": false, rust: true });
  assert.equal(debounceOf(150.4), 150);
  assert.equal(debounceOf(-3), 0);
  assert.equal(debounceOf(99_999), 2000);
  assert.equal(debounceOf("fast"), 200);
});

// --- the provider, with a fake `vscode` -----------------------------------------------------------------
class FakeRange {
  constructor(readonly start: unknown, readonly end: unknown) {}
}
class FakeItem {
  constructor(readonly insertText: string, readonly range: FakeRange) {}
}

function doc(fsPath: string, text: string, dirty = false, scheme = "file", languageId = "python") {
  return {
    uri: { scheme, fsPath, toString: () => `${scheme}://${fsPath}` },
    languageId, isDirty: dirty,
    getText: () => text,
    offsetAt: (p: { line: number; character: number }) =>
      text.split("\n").slice(0, p.line).reduce((n, line) => n + line.length + 1, 0) + p.character,
  };
}

function fakeVs(documents: ReturnType<typeof doc>[]): VsCodeApi {
  return { InlineCompletionItem: FakeItem, Range: FakeRange, workspace: { textDocuments: documents } } as unknown as VsCodeApi;
}

function token(cancelled = false) {
  const listeners: (() => void)[] = [];
  return {
    isCancellationRequested: cancelled,
    onCancellationRequested: (fn: () => void) => {
      listeners.push(fn);
      return { dispose: () => listeners.splice(listeners.indexOf(fn), 1) };
    },
    cancel() {
      this.isCancellationRequested = true;
      for (const fn of [...listeners]) fn();
    },
    listeners,
  };
}

test("the query: the text around the cursor, the workspace's other open files and their unsaved texts", () => {
  const current = doc("/w/app.py", "def f():\n    return \n");
  const docs = [current, doc("/w/util.py", "saved"), doc("/w/lib/new.py", "unsaved", true), doc("/elsewhere/x.py", "x"),
                doc("/w/out", "o", false, "output")];
  const q = queryAt(fakeVs(docs), "/w", current as never, { line: 1, character: 11 } as never);
  assert.equal(q.prefix, "def f():\n    return ");
  assert.equal(q.suffix, "\n");
  assert.equal(q.path, "app.py");
  assert.deepEqual(q.openFiles, ["util.py", "lib/new.py"]);
  assert.deepEqual(q.buffers, { "lib/new.py": "unsaved" });
  const untitled = doc("Untitled-1", "x = ", false, "untitled");
  assert.equal(queryAt(fakeVs([]), "/w", untitled as never, { line: 0, character: 4 } as never).path, null);
});

test("the provider: ghost text at the cursor; off for disabled languages and while the suggest widget shows", async () => {
  const current = doc("/w/app.py", "x = \n");
  const asked: CompletionBody[] = [];
  const engine = new CompletionEngine({
    request: async (body) => {
      asked.push(body);
      return result("compute()");
    },
    debounceMs: () => 0,
  });
  let enabled = true;
  const provider = new InlineCompletions(fakeVs([current]), engine, () => enabled, () => "/w");
  const position = { line: 0, character: 4 };
  const items = await provider.provideInlineCompletionItems(current as never, position as never,
                                                             {} as never, token() as never);
  assert.equal(items?.length, 1);
  const item = items![0] as unknown as FakeItem;
  assert.equal(item.insertText, "compute()");
  assert.deepEqual([item.range.start, item.range.end], [position, position]);
  assert.equal(asked[0]!.language, "python");
  const widget = { selectedCompletionInfo: { text: "x" } };
  assert.equal(await provider.provideInlineCompletionItems(current as never, position as never, widget as never,
                                                           token() as never), undefined);
  enabled = false;
  assert.equal(await provider.provideInlineCompletionItems(current as never, { line: 0, character: 1 } as never,
                                                           {} as never, token() as never), undefined);
  assert.equal(asked.length, 1);
});

test("the provider: VS Code's cancellation aborts the request and lets go of its listener", async () => {
  const current = doc("/w/app.py", "y = \n");
  let signal: AbortSignal | undefined;
  const engine = new CompletionEngine({
    request: (_body, s) => {
      signal = s;
      return new Promise((_, reject) => s.addEventListener("abort", () => reject(Object.assign(new Error("a"), { name: "AbortError" }))));
    },
    debounceMs: () => 0,
  });
  const provider = new InlineCompletions(fakeVs([current]), engine, () => true, () => "/w");
  const t = token();
  const pending = provider.provideInlineCompletionItems(current as never, { line: 0, character: 4 } as never,
                                                        {} as never, t as never);
  while (!signal) await new Promise((r) => setTimeout(r, 1));
  t.cancel();
  assert.equal(signal.aborted, true);
  assert.equal(await pending, undefined);
  assert.equal(t.listeners.length, 0);
});
