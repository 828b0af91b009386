// Markdown for the chat, kept deliberately small and safe: a reply is split into text and fenced code
// blocks, and text into inline tokens. The webview builds DOM nodes from these with textContent only
// (no HTML from the model ever reaches innerHTML). Bundled for the webview as `corollaMarkdown`.

export type Block =
  | { kind: "text"; text: string }
  | { kind: "code"; lang: string; code: string; closed: boolean };

export type Inline = { kind: "text" | "code" | "bold" | "em"; text: string };

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)[^`]*$/;

/** Text and fenced code blocks, in order. An unclosed fence (a reply still streaming) runs to the end. */
export function splitBlocks(markdown: string): Block[] {
  const blocks: Block[] = [];
  const lines = markdown.split(/\r?\n/);
  let text: string[] = [];
  let code: { fence: string; lang: string; lines: string[] } | null = null;
  const flushText = () => {
    const joined = text.join("\n");
    if (joined.trim()) blocks.push({ kind: "text", text: joined.replace(/^\n+|\n+$/g, "") });
    text = [];
  };
  for (const line of lines) {
    if (code) {
      const close = line.trim();
      if (close.startsWith(code.fence[0]!) && close.length >= code.fence.length && /^(`+|~+)$/.test(close)) {
        blocks.push({ kind: "code", lang: code.lang, code: code.lines.join("\n"), closed: true });
        code = null;
      } else {
        code.lines.push(line);
      }
      continue;
    }
    const open = FENCE.exec(line);
    if (open) {
      flushText();
      code = { fence: open[1]!, lang: open[2] ?? "", lines: [] };
    } else {
      text.push(line);
    }
  }
  if (code) blocks.push({ kind: "code", lang: code.lang, code: code.lines.join("\n"), closed: false });
  else flushText();
  return blocks;
}

const INLINE = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)|\*\*([^*\n]+)\*\*|(?<![\w*])\*([^*\s][^*\n]*?)\*(?![\w*])/g;

/** Inline code, **bold** and *emphasis* in a line of text; everything else is plain text. */
export function inlineTokens(line: string): Inline[] {
  const out: Inline[] = [];
  let last = 0;
  for (const m of line.matchAll(INLINE)) {
    const at = m.index ?? 0;
    if (at > last) out.push({ kind: "text", text: line.slice(last, at) });
    if (m[2] !== undefined) out.push({ kind: "code", text: m[2].replace(/^ (.*) $/, "$1") });
    else if (m[3] !== undefined) out.push({ kind: "bold", text: m[3] });
    else out.push({ kind: "em", text: m[4] ?? "" });
    last = at + m[0].length;
  }
  if (last < line.length) out.push({ kind: "text", text: line.slice(last) });
  return out;
}

/** HTML-escaped text (for the rare place that builds markup as a string). */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!);
}
