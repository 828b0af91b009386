import assert from "node:assert/strict";
import * as path from "node:path";
import { test } from "node:test";
import { buildEditorState, formatDiagnostic, relativePath, replaceLines, selectionLines, type PlainSelection } from "../src/state";

const root = path.resolve("/work/project");
const at = (...p: string[]) => path.join(root, ...p);
const pos = (line: number, character: number) => ({ line, character });
const sel = (a: [number, number], b: [number, number], active = b): PlainSelection =>
  ({ start: pos(...a), end: pos(...b), active: pos(...active) });

test("relative paths inside the workspace only, with forward slashes", () => {
  assert.equal(relativePath(root, at("src", "app.py")), "src/app.py");
  assert.equal(relativePath(root, path.resolve("/work/other/x.py")), undefined);
  assert.equal(relativePath(root, root), undefined);
});

test("selection lines are 1-based and inclusive; a selection ending at column 0 leaves that line out", () => {
  assert.equal(selectionLines(undefined), null);
  assert.equal(selectionLines(sel([4, 2], [4, 2])), null);
  assert.deepEqual(selectionLines(sel([1, 0], [3, 5])), [2, 4]);
  assert.deepEqual(selectionLines(sel([1, 0], [3, 0])), [2, 3]);
  assert.deepEqual(selectionLines(sel([2, 0], [2, 7])), [3, 3]);
});

test("the editor object: current file, selection, cursor, open files, unsaved buffers, diagnostics", () => {
  const state = buildEditorState({
    root,
    current: { fsPath: at("app.py"), text: "x = 1\n", dirty: true },
    selection: sel([0, 0], [1, 3], [0, 0]),
    documents: [
      { fsPath: at("app.py"), text: "x = 1\n", dirty: true },
      { fsPath: at("lib", "util.py"), text: "saved", dirty: false },
      { fsPath: path.resolve("/elsewhere/notes.txt"), text: "outside", dirty: true },
    ],
    diagnostics: [
      { fsPath: at("lib", "util.py"), line: 0, severity: "warning", message: "unused import" },
      { fsPath: at("app.py"), line: 4, severity: "warning", message: "shadowed", source: "pyright" },
      { fsPath: at("app.py"), line: 2, severity: "error", message: "undefined name y" },
      { fsPath: path.resolve("/elsewhere/notes.txt"), line: 0, severity: "error", message: "ignored" },
    ],
  });
  assert.deepEqual(state, {
    current_file: "app.py",
    selection: [1, 2],
    cursor_line: 1,
    open_files: ["app.py", "lib/util.py"],
    buffers: { "app.py": "x = 1\n" },
    diagnostics: ["app.py:3: error: undefined name y", "app.py:5: warning: shadowed (pyright)",
                  "lib/util.py:1: warning: unused import"],
  });
});

test("no editor, or a file outside the workspace: no current file, selection or cursor", () => {
  const empty = buildEditorState({ root, documents: [], diagnostics: [] });
  assert.deepEqual(empty, { current_file: null, selection: null, cursor_line: null, open_files: [], buffers: {}, diagnostics: [] });
  const outside = buildEditorState({
    root, current: { fsPath: "/tmp/x.py", text: "", dirty: false }, selection: sel([0, 0], [2, 0]), documents: [], diagnostics: [],
  });
  assert.equal(outside.current_file, null);
  assert.equal(outside.selection, null);
  assert.equal(outside.cursor_line, null);
});

test("an empty selection sends the cursor line only", () => {
  const state = buildEditorState({ root, current: { fsPath: at("a.ts"), text: "", dirty: false },
                                   selection: sel([6, 3], [6, 3]), documents: [], diagnostics: [] });
  assert.equal(state.selection, null);
  assert.equal(state.cursor_line, 7);
});

test("huge unsaved buffers are not sent", () => {
  const big = "x".repeat(200_001);
  const state = buildEditorState({ root, documents: [{ fsPath: at("big.txt"), text: big, dirty: true }], diagnostics: [] });
  assert.deepEqual(state.buffers, {});
  assert.deepEqual(state.open_files, ["big.txt"]);
});

test("formatDiagnostic", () => {
  assert.equal(formatDiagnostic(root, { fsPath: at("a.py"), line: 0, severity: "hint", message: "m" }), "a.py:1: hint: m");
});

test("replaceLines puts a code block in place of the selected lines, keeping the line ends", () => {
  assert.equal(replaceLines("a\nb\nc\nd\n", [2, 3], "X\nY\n"), "a\nX\nY\nd\n");
  assert.equal(replaceLines("a\r\nb\r\nc\r\n", [1, 1], "Z"), "Z\r\nb\r\nc\r\n");
  assert.equal(replaceLines("old\n", null, "new"), "new\n");
  assert.equal(replaceLines("old", null, "new"), "new");
});
