import assert from "node:assert/strict";
import { test } from "node:test";
import { readJsonEvents, readSse, SseParser, type SseMessage } from "../src/sse";

const STREAM = 'data: {"type":"session","id":"a1"}\n\n: keep-alive\n\nid: 7\ndata: {"type":"delta",\ndata: "text":"héllo ✓"}\n\n';

function parseAll(chunks: string[]): SseMessage[] {
  const parser = new SseParser();
  return [...chunks.flatMap((c) => parser.feed(c)), ...parser.end()];
}

test("parses whole messages, comments, multi-line data and ids", () => {
  assert.deepEqual(parseAll([STREAM]), [
    { data: '{"type":"session","id":"a1"}' },
    { data: '{"type":"delta",\n"text":"héllo ✓"}', id: "7" },
  ]);
});

test("gives the same messages however the text is split", () => {
  const whole = parseAll([STREAM]);
  for (let i = 0; i <= STREAM.length; i++) {
    assert.deepEqual(parseAll([STREAM.slice(0, i), STREAM.slice(i)]), whole, `split at ${i}`);
  }
  assert.deepEqual(parseAll([...STREAM]), whole, "one character at a time");
});

test("handles CRLF and CR line ends, also split between chunks", () => {
  const crlf = STREAM.replace(/\n/g, "\r\n");
  assert.deepEqual(parseAll([crlf]), parseAll([STREAM]));
  for (let i = 0; i <= crlf.length; i++) {
    assert.deepEqual(parseAll([crlf.slice(0, i), crlf.slice(i)]), parseAll([STREAM]), `split at ${i}`);
  }
  assert.deepEqual(parseAll(["data: x\r\rdata: y\r\r"]), [{ data: "x" }, { data: "y" }]);
});

test("a field without a value, a value without the space, and event names", () => {
  assert.deepEqual(parseAll(["event: ping\ndata\ndata:two\n\n"]), [{ data: "\ntwo", event: "ping" }]);
});

test("a message left open at the end of the stream is still delivered", () => {
  assert.deepEqual(parseAll(["data: last"]), [{ data: "last" }]);
  assert.deepEqual(parseAll(["data: a\n\n", "\n\n"]), [{ data: "a" }]);
});

async function* bytes(parts: Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const p of parts) yield p;
}

test("readSse decodes UTF-8 split inside a character", async () => {
  const encoded = new TextEncoder().encode(STREAM);
  const at = encoded.indexOf(0xc3) + 1; // inside "é"
  const out: SseMessage[] = [];
  for await (const m of readSse(bytes([encoded.slice(0, at), encoded.slice(at)]))) out.push(m);
  assert.deepEqual(out, parseAll([STREAM]));
});

test("readJsonEvents yields objects, skips non-JSON and keeps the id", async () => {
  const text = 'data: {"type":"a"}\n\ndata: not json\n\nid: 3\ndata: {"type":"b"}\n\ndata: 5\n\n';
  const out: unknown[] = [];
  for await (const e of readJsonEvents(bytes([new TextEncoder().encode(text)]))) out.push(e);
  assert.deepEqual(out, [{ type: "a" }, { type: "b", _id: "3" }]);
});
