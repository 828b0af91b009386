// Server-sent events: a parser fed with text chunks split anywhere, and a reader over a fetch body.

export interface SseMessage {
  data: string;
  event?: string;
  id?: string;
}

/** Incremental SSE parser (the WHATWG rules that matter here: `data`/`event`/`id` fields, several
 * `data` lines joined by "\n", comments, CR/LF/CRLF line ends, a message ends at a blank line). */
export class SseParser {
  private buffer = "";
  private data: string[] = [];
  private event: string | undefined;
  private id: string | undefined;
  private pendingCR = false;

  /** Feed a chunk of text; returns the messages it completed. */
  feed(chunk: string): SseMessage[] {
    if (this.pendingCR && chunk.startsWith("\n")) chunk = chunk.slice(1); // CRLF split across chunks
    this.pendingCR = false;
    this.buffer += chunk;
    const out: SseMessage[] = [];
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (c !== "\n" && c !== "\r") continue;
      this.line(this.buffer.slice(start, i), out);
      if (c === "\r") {
        if (i + 1 === this.buffer.length) this.pendingCR = true;
        else if (this.buffer[i + 1] === "\n") i++;
      }
      start = i + 1;
    }
    this.buffer = this.buffer.slice(start);
    return out;
  }

  /** The message left open when the stream ends without a final blank line (if any). */
  end(): SseMessage[] {
    const out: SseMessage[] = [];
    if (this.buffer) this.line(this.buffer, out);
    this.buffer = "";
    this.line("", out);
    return out;
  }

  private line(line: string, out: SseMessage[]): void {
    if (line === "") {
      if (this.data.length) {
        const message: SseMessage = { data: this.data.join("\n") };
        if (this.event !== undefined) message.event = this.event;
        if (this.id !== undefined) message.id = this.id;
        out.push(message);
      }
      this.data = [];
      this.event = undefined;
      return;
    }
    if (line.startsWith(":")) return; // comment / keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id") this.id = value; // the last event id persists, as in EventSource
  }
}

/** The SSE messages of a byte stream (a fetch response body), decoded as UTF-8 across chunk bounds. */
export async function* readSse(body: AsyncIterable<Uint8Array>): AsyncGenerator<SseMessage> {
  const decoder = new TextDecoder("utf-8");
  const parser = new SseParser();
  for await (const bytes of body) {
    yield* parser.feed(decoder.decode(bytes, { stream: true }));
  }
  yield* parser.feed(decoder.decode());
  yield* parser.end();
}

/** The JSON events of a stream of `data: {json}` messages (a message that is not JSON is skipped). */
export async function* readJsonEvents<T = Record<string, unknown>>(
  body: AsyncIterable<Uint8Array>,
): AsyncGenerator<T & { _id?: string }> {
  for await (const message of readSse(body)) {
    let value: unknown;
    try {
      value = JSON.parse(message.data);
    } catch {
      continue;
    }
    if (value && typeof value === "object") {
      const event = value as T & { _id?: string };
      if (message.id !== undefined) event._id = message.id;
      yield event;
    }
  }
}
