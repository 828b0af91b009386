import assert from "node:assert/strict";
import { test } from "node:test";
import { CorollaClient, ServiceError, type Fetch } from "../src/client";
import type { EditorState } from "../src/types";

interface Call {
  url: string;
  method: string;
  headers: Record<string, string>;
  body: unknown;
  signal: AbortSignal | undefined;
}

function fakeFetch(respond: (call: Call) => Response | Promise<Response>): { fetch: Fetch; calls: Call[] } {
  const calls: Call[] = [];
  const fetch: Fetch = async (url, init) => {
    const call: Call = {
      url, method: init?.method ?? "GET", headers: (init?.headers ?? {}) as Record<string, string>,
      body: init?.body ? JSON.parse(String(init.body)) : undefined, signal: init?.signal ?? undefined,
    };
    calls.push(call);
    return respond(call);
  };
  return { fetch, calls };
}

const json = (value: unknown, status = 200) =>
  new Response(JSON.stringify(value), { status, headers: { "Content-Type": "application/json" } });

function sse(chunks: string[]): Response {
  const encoder = new TextEncoder();
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const c of chunks) controller.enqueue(encoder.encode(c));
      controller.close();
    },
  });
  return new Response(body, { headers: { "Content-Type": "text/event-stream" } });
}

const editor: EditorState = {
  current_file: "app.py", selection: [2, 4], cursor_line: 3, open_files: ["app.py"], buffers: {}, diagnostics: [],
};

test("GET /health with the token and without an Origin", async () => {
  const { fetch, calls } = fakeFetch(() => json({ workspace: "/w", endpoint: "e", model: "m", model_ok: true }));
  const client = new CorollaClient({ baseUrl: "http://127.0.0.1:8765/", token: "T", fetch });
  const health = await client.health();
  assert.equal(health.model, "m");
  assert.equal(calls[0]!.url, "http://127.0.0.1:8765/health");
  assert.equal(calls[0]!.method, "GET");
  assert.equal(calls[0]!.headers.Authorization, "Bearer T");
  assert.ok(!Object.keys(calls[0]!.headers).some((h) => h.toLowerCase() === "origin"));
});

test("no Authorization header without a token", async () => {
  const { fetch, calls } = fakeFetch(() => json({ sessions: [] }));
  await new CorollaClient({ baseUrl: "http://h", fetch }).sessions();
  assert.equal(calls[0]!.headers.Authorization, undefined);
  assert.equal(calls[0]!.url, "http://h/sessions?kind=chat");
});

test("POST /edits sends the instruction and editor; accept says the editor applied it", async () => {
  const proposal = { edit_id: "e1", diff: "d", files: ["app.py"], changes: [{ path: "app.py", before: "a", after: "b" }], notes: [] };
  const { fetch, calls } = fakeFetch((c) => json(c.url.endsWith("/edits") ? proposal : { status: "accepted" }));
  const client = new CorollaClient({ baseUrl: "http://h", fetch });
  assert.deepEqual(await client.proposeEdit("rename x", editor), proposal);
  assert.deepEqual(calls[0]!.body, { instruction: "rename x", editor });
  assert.equal(calls[0]!.headers["Content-Type"], "application/json");
  await client.acceptEdit("e1");
  assert.equal(calls[1]!.url, "http://h/edits/e1/accept");
  assert.deepEqual(calls[1]!.body, { applied_by_editor: true });
  await client.rejectEdit("e/1");
  assert.equal(calls[2]!.url, "http://h/edits/e%2F1/reject");
});

test("the service's errors become ServiceError with status, type and message", async () => {
  const { fetch } = fakeFetch(() => json({ error: { type: "EditError", message: "the reply has no code" } }, 422));
  const client = new CorollaClient({ baseUrl: "http://h", fetch });
  await assert.rejects(client.proposeEdit("x", editor), (e: unknown) => {
    assert.ok(e instanceof ServiceError);
    assert.equal(e.status, 422);
    assert.equal(e.type, "EditError");
    assert.equal(e.message, "the reply has no code");
    return true;
  });
});

test("a non-JSON error body is still reported", async () => {
  const { fetch } = fakeFetch(() => new Response("Bad Gateway", { status: 502 }));
  await assert.rejects(new CorollaClient({ baseUrl: "http://h", fetch }).agents(),
                       (e: unknown) => e instanceof ServiceError && e.status === 502 && e.message === "Bad Gateway");
});

test("a refused connection is ServiceError Unreachable (status 0)", async () => {
  const fetch: Fetch = async () => {
    throw new TypeError("fetch failed", { cause: new Error("connect ECONNREFUSED 127.0.0.1:8765") });
  };
  await assert.rejects(new CorollaClient({ baseUrl: "http://127.0.0.1:8765", fetch }).health(), (e: unknown) => {
    assert.ok(e instanceof ServiceError);
    assert.equal(e.status, 0);
    assert.equal(e.type, "Unreachable");
    assert.match(e.message, /127\.0\.0\.1:8765 does not answer \(connect ECONNREFUSED/);
    return true;
  });
});

test("sendMessage streams the turn's events from split chunks", async () => {
  const { fetch, calls } = fakeFetch(() => sse([
    'data: {"type":"session","id":"s1"}\n\ndata: {"type":"context","parts":[],"used_tok',
    'ens":0,"budget_tokens":2000,"dropped":[]}\n\ndata: {"type":"delta","text":"Hel"}\n',
    '\ndata: {"type":"delta","text":"lo"}\n\ndata: {"type":"done","message_id":"m"}\n\n',
  ]));
  const client = new CorollaClient({ baseUrl: "http://h", fetch });
  const types: string[] = [];
  let text = "";
  for await (const e of client.sendMessage("s1", "/explain", editor)) {
    types.push(e.type);
    if (e.type === "delta") text += e.text;
  }
  assert.deepEqual(types, ["session", "context", "delta", "delta", "done"]);
  assert.equal(text, "Hello");
  assert.equal(calls[0]!.url, "http://h/sessions/s1/messages");
  assert.deepEqual(calls[0]!.body, { text: "/explain", editor });
});

test("an error before streaming is thrown, not streamed", async () => {
  const { fetch } = fakeFetch(() => json({ error: { type: "AssistantError", message: "nothing is staged" } }, 400));
  const stream = new CorollaClient({ baseUrl: "http://h", fetch }).sendMessage("s", "/commit", editor);
  await assert.rejects(stream.next(), /nothing is staged/);
});

test("aborting the signal stops the stream (Stop)", async () => {
  const fetch: Fetch = async (_url, init) => {
    const signal = init!.signal!;
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('data: {"type":"delta","text":"a"}\n\n'));
        signal.addEventListener("abort", () => controller.error(Object.assign(new Error("aborted"), { name: "AbortError" })));
      },
    });
    return new Response(body);
  };
  const abort = new AbortController();
  const seen: string[] = [];
  await assert.rejects((async () => {
    for await (const e of new CorollaClient({ baseUrl: "http://h", fetch }).sendMessage("s", "hi", editor, abort.signal)) {
      seen.push(e.type);
      abort.abort();
    }
  })(), { name: "AbortError" });
  assert.deepEqual(seen, ["delta"]);
});

test("agent endpoints: start in the background, follow events after N, actions", async () => {
  const { fetch, calls } = fakeFetch((c) => {
    if (c.url.includes("/events")) return sse(['id: 4\ndata: {"seq":4,"type":"status","data":{"status":"running"}}\n\n',
                                               'data: {"type":"end","status":"done"}\n\n']);
    return json({ id: "ag1", status: "running" });
  });
  const client = new CorollaClient({ baseUrl: "http://h", fetch });
  await client.startAgent("add tests");
  assert.deepEqual(calls[0]!.body, { task: "add tests", background: true });
  const events = [];
  for await (const e of client.agentEvents("ag1", 3)) events.push(e);
  assert.equal(calls[1]!.url, "http://h/agents/ag1/events?after=3");
  assert.deepEqual(events.map((e) => e.type), ["status", "end"]);
  await client.agentAction("ag1", "apply");
  assert.equal(calls[2]!.url, "http://h/agents/ag1/apply");
  assert.equal(calls[2]!.method, "POST");
});
