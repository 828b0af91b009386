// The assistant service's HTTP client. `fetch` is injected (Node's global one in the extension host,
// a fake in the unit tests). Requests never carry an Origin header: the service refuses those.

import { readJsonEvents } from "./sse";
import type {
  Agent, AgentDetail, AgentEvent, ChatEvent, ContextInfo, EditorState, EditProposal, Health, Session,
  SessionDetail,
} from "./types";

export type Fetch = (url: string, init?: RequestInit) => Promise<Response>;

/** POST /completions: the text around the cursor of one document (see src/corolla/assistant/completions.py). */
export interface CompletionBody {
  prefix: string;
  suffix: string;
  path: string | null;
  language: string;
  open_files: string[];
  buffers: Record<string, string>;
  multiline?: boolean;
}

export interface CompletionResult {
  completion: string;
  multiline: boolean;
  reason: string;
  /** end_of_line | comment | block_end | max_lines | stop | length | skipped | empty | cancelled | superseded */
  finish_reason: string;
  prompt_tokens: number;
  snippets: string[];
  cached: boolean;
  first_token_s: number | null;
  total_s: number;
}

export interface ClientOptions {
  baseUrl: string;
  token?: string;
  fetch?: Fetch;
  /** Milliseconds before a plain (non-streaming) request gives up; 0 for none. */
  timeoutMs?: number;
}

/** An error the service answered with (`{"error": {type, message}}`), or `Unreachable` (status 0). */
export class ServiceError extends Error {
  constructor(readonly status: number, readonly type: string, message: string) {
    super(message);
    this.name = "ServiceError";
  }
}

export function isAbort(error: unknown): boolean {
  return error instanceof Error && (error.name === "AbortError" || error.name === "TimeoutError");
}

export class CorollaClient {
  readonly baseUrl: string;
  private readonly token: string;
  private readonly fetchFn: Fetch;
  private readonly timeoutMs: number;

  constructor(options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.token = options.token ?? "";
    this.fetchFn = options.fetch ?? ((url, init) => fetch(url, init));
    this.timeoutMs = options.timeoutMs ?? 0;
  }

  // --- plain requests -----------------------------------------------------------------------
  health(signal?: AbortSignal): Promise<Health> {
    return this.json("GET", "/health", undefined, signal);
  }
  context(editor: EditorState, query = ""): Promise<ContextInfo> {
    return this.json("POST", "/context", { editor, query });
  }
  async sessions(kind = "chat"): Promise<Session[]> {
    return (await this.json<{ sessions: Session[] }>("GET", `/sessions?kind=${encodeURIComponent(kind)}`)).sessions;
  }
  createSession(title = ""): Promise<Session> {
    return this.json("POST", "/sessions", { title });
  }
  session(id: string): Promise<SessionDetail> {
    return this.json("GET", `/sessions/${encodeURIComponent(id)}`);
  }
  deleteSession(id: string): Promise<unknown> {
    return this.json("DELETE", `/sessions/${encodeURIComponent(id)}`);
  }
  proposeEdit(instruction: string, editor: EditorState, signal?: AbortSignal, sessionId?: string): Promise<EditProposal> {
    const body: Record<string, unknown> = { instruction, editor };
    if (sessionId) body.session_id = sessionId;
    return this.json("POST", "/edits", body, signal, 0);
  }
  acceptEdit(id: string): Promise<unknown> {
    return this.json("POST", `/edits/${encodeURIComponent(id)}/accept`, { applied_by_editor: true });
  }
  rejectEdit(id: string): Promise<unknown> {
    return this.json("POST", `/edits/${encodeURIComponent(id)}/reject`, {});
  }
  undo(sessionId?: string): Promise<unknown> {
    return this.json("POST", "/undo", sessionId ? { session_id: sessionId } : {});
  }
  async agents(): Promise<Agent[]> {
    return (await this.json<{ agents: Agent[] }>("GET", "/agents")).agents;
  }
  startAgent(task: string, maxSteps?: number): Promise<Agent> {
    const body: Record<string, unknown> = { task, background: true };
    if (maxSteps) body.max_steps = maxSteps;
    return this.json("POST", "/agents", body, undefined, 0);
  }
  agent(id: string): Promise<AgentDetail> {
    return this.json("GET", `/agents/${encodeURIComponent(id)}`);
  }
  agentAction(id: string, action: "stop" | "apply" | "discard"): Promise<Record<string, unknown>> {
    return this.json("POST", `/agents/${encodeURIComponent(id)}/${action}`, {}, undefined, 0);
  }

  /** Ghost text at the cursor; abort `signal` when the user types on (the service then stops the generation). */
  complete(body: CompletionBody, signal?: AbortSignal): Promise<CompletionResult> {
    return this.json("POST", "/completions", body, signal, 60_000);
  }

  // --- streams --------------------------------------------------------------------------------
  /** A chat turn (plain text or a /command): its events until `done`; abort `signal` to stop it. */
  async *sendMessage(sessionId: string, text: string, editor: EditorState, signal?: AbortSignal): AsyncGenerator<ChatEvent> {
    const response = await this.request("POST", `/sessions/${encodeURIComponent(sessionId)}/messages`,
                                        { text, editor }, signal, 0);
    yield* readJsonEvents<ChatEvent>(bodyOf(response));
  }

  /** An agent's events after `after`, following until `{"type": "end"}`. */
  async *agentEvents(id: string, after = 0, signal?: AbortSignal): AsyncGenerator<AgentEvent> {
    const response = await this.request("GET", `/agents/${encodeURIComponent(id)}/events?after=${after}`,
                                        undefined, signal, 0);
    yield* readJsonEvents<AgentEvent>(bodyOf(response));
  }

  // --- plumbing -----------------------------------------------------------------------------
  private async json<T>(method: string, path: string, body?: unknown, signal?: AbortSignal, timeoutMs?: number): Promise<T> {
    const response = await this.request(method, path, body, signal, timeoutMs);
    return (await response.json()) as T;
  }

  private async request(method: string, path: string, body: unknown, signal: AbortSignal | undefined,
                        timeoutMs = this.timeoutMs): Promise<Response> {
    const headers: Record<string, string> = { Accept: "application/json, text/event-stream" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    const signals = [signal, timeoutMs > 0 ? AbortSignal.timeout(timeoutMs) : undefined].filter(
      (s): s is AbortSignal => s !== undefined);
    const init: RequestInit = { method, headers };
    if (body !== undefined) init.body = JSON.stringify(body);
    if (signals.length) init.signal = signals.length === 1 ? signals[0] : anySignal(signals);
    let response: Response;
    try {
      response = await this.fetchFn(this.baseUrl + path, init);
    } catch (error) {
      if (isAbort(error)) throw error;
      throw new ServiceError(0, "Unreachable", `the Corolla service at ${this.baseUrl} does not answer ` +
                             `(${error instanceof Error ? (causeOf(error) ?? error.message) : String(error)})`);
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }
}

async function errorOf(response: Response): Promise<ServiceError> {
  let text = "";
  try {
    text = await response.text();
    const parsed = JSON.parse(text) as { error?: { type?: string; message?: string } };
    if (parsed.error?.message) {
      return new ServiceError(response.status, parsed.error.type ?? "Error", parsed.error.message);
    }
  } catch {
    // not the service's JSON: fall through
  }
  return new ServiceError(response.status, `HTTP${response.status}`,
                          text.trim().slice(0, 300) || `HTTP ${response.status} ${response.statusText}`);
}

function bodyOf(response: Response): AsyncIterable<Uint8Array> {
  if (!response.body) return (async function* () {})();
  return response.body as unknown as AsyncIterable<Uint8Array>;
}

function causeOf(error: Error): string | undefined {
  const cause = (error as Error & { cause?: unknown }).cause;
  return cause instanceof Error ? cause.message : undefined;
}

function anySignal(signals: AbortSignal[]): AbortSignal {
  const controller = new AbortController();
  for (const s of signals) {
    if (s.aborted) {
      controller.abort(s.reason);
      break;
    }
    s.addEventListener("abort", () => controller.abort(s.reason), { once: true });
  }
  return controller.signal;
}
