import assert from "node:assert/strict";
import { test } from "node:test";
import { escapeHtml, inlineTokens, splitBlocks } from "../src/markdown";

test("text and fenced code blocks in order, with the language", () => {
  const md = "Here:\n\n```python\ndef f():\n    return 1\n```\n\nThen **bold**.\n~~~\nplain\n~~~";
  assert.deepEqual(splitBlocks(md), [
    { kind: "text", text: "Here:" },
    { kind: "code", lang: "python", code: "def f():\n    return 1", closed: true },
    { kind: "text", text: "Then **bold**." },
    { kind: "code", lang: "", code: "plain", closed: true },
  ]);
});

test("an unclosed fence (still streaming) runs to the end", () => {
  assert.deepEqual(splitBlocks("Sure\n```ts\nconst a = 1;"), [
    { kind: "text", text: "Sure" },
    { kind: "code", lang: "ts", code: "const a = 1;", closed: false },
  ]);
  assert.deepEqual(splitBlocks("```"), [{ kind: "code", lang: "", code: "", closed: false }]);
});

test("a longer fence holds shorter ones; the other fence character does not close it", () => {
  const md = "````md\n```js\nx\n```\n~~~\n````";
  assert.deepEqual(splitBlocks(md), [{ kind: "code", lang: "md", code: "```js\nx\n```\n~~~", closed: true }]);
});

test("empty and whitespace-only text makes no blocks", () => {
  assert.deepEqual(splitBlocks(""), []);
  assert.deepEqual(splitBlocks("\n\n  \n"), []);
});

test("inline code, bold and emphasis; HTML stays text", () => {
  assert.deepEqual(inlineTokens("use `x < y` and **not** *this* <b>here</b>"), [
    { kind: "text", text: "use " },
    { kind: "code", text: "x < y" },
    { kind: "text", text: " and " },
    { kind: "bold", text: "not" },
    { kind: "text", text: " " },
    { kind: "em", text: "this" },
    { kind: "text", text: " <b>here</b>" },
  ]);
  assert.deepEqual(inlineTokens("a*b*c 2 * 3"), [{ kind: "text", text: "a*b*c 2 * 3" }]);
  assert.deepEqual(inlineTokens("``a`b``"), [{ kind: "code", text: "a`b" }]);
  assert.deepEqual(inlineTokens(""), []);
});

test("escapeHtml", () => {
  assert.equal(escapeHtml(`<img src=x onerror="a('b')">&`), "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;");
});
