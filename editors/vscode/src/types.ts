// The service's JSON shapes (see src/corolla/assistant/service.py and agent/routes.py).

export interface EditorState {
  current_file: string | null;
  selection: [number, number] | null;
  cursor_line: number | null;
  open_files: string[];
  buffers: Record<string, string>;
  diagnostics: string[];
}

export interface Health {
  workspace: string;
  endpoint: string;
  model: string | null;
  model_ok: boolean;
  problem?: string;
}

export interface ContextPart {
  kind: string;
  label: string;
  tokens: number;
  truncated: boolean;
}

export interface ContextInfo {
  parts: ContextPart[];
  used_tokens: number;
  budget_tokens: number;
  dropped: string[];
}

export interface Session {
  id: string;
  title: string;
  kind: string;
  created: number;
  updated: number;
}

export interface Message {
  id: string;
  seq: number;
  role: string;
  content: string;
}

export interface SessionDetail extends Session {
  messages: Message[];
}

export interface FileChange {
  path: string;
  /** null for a file the edit creates */
  before: string | null;
  after: string;
}

export interface EditProposal {
  edit_id: string;
  session_id?: string;
  diff: string;
  files: string[];
  changes: FileChange[];
  notes: string[];
}

export interface ServiceErrorBody {
  type: string;
  message: string;
}

/** A chat turn's events (POST /sessions/{id}/messages). */
export type ChatEvent =
  | { type: "session"; id: string }
  | ({ type: "context" } & ContextInfo)
  | { type: "delta"; text: string }
  | ({ type: "edit" } & EditProposal)
  | { type: "edit_error"; error: ServiceErrorBody }
  | { type: "commit_message"; text: string }
  | { type: "done"; message_id?: string; session_id?: string }
  | { type: "error"; error: ServiceErrorBody };

export interface Agent {
  id: string;
  title: string;
  task: string | null;
  status: string | null;
  report_text?: string | null;
  error?: string | null;
  applied_files?: string[] | null;
  created: number;
  updated: number;
}

export interface AgentDetail extends Agent {
  diff: string;
}

/** One stored agent event (GET /agents/{id}/events), or the final `end`. */
export interface AgentEvent {
  type: string;
  seq?: number;
  data?: unknown;
  status?: string;
  created?: number;
}
