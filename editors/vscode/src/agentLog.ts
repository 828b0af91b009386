// An agent's stored events as lines of its log (pure: shown in the "Corolla Agent <id>" output channel).

import type { AgentEvent } from "./types";

const clip = (text: string, n = 2000) => (text.length > n ? `${text.slice(0, n)}… (${text.length - n} more characters)` : text);

function record(data: unknown): Record<string, unknown> {
  return data && typeof data === "object" ? (data as Record<string, unknown>) : {};
}

export function formatAgentEvent(event: AgentEvent): string {
  const d = record(event.data);
  const at = event.seq !== undefined ? `[${event.seq}] ` : "";
  switch (event.type) {
    case "end":
      return `— the agent finished: ${event.status ?? "?"}`;
    case "task":
      return `${at}task: ${String(d.task ?? "")}`;
    case "status":
      return `${at}status: ${String(d.status ?? "")}${d.error ? ` (${String(d.error)})` : ""}`;
    case "assistant":
      return `${at}model (step ${String(d.step ?? "?")}):\n${clip(String(d.text ?? "").trim())}`;
    case "tool_call":
      return `${at}→ ${String(d.name ?? "?")} ${clip(JSON.stringify(d.arguments ?? {}), 500)}`;
    case "tool_result":
      return `${at}← ${String(d.name ?? "?")} ${d.ok ? "ok" : "failed"}\n${clip(String(d.output ?? "").trimEnd())}`;
    case "edit":
      return `${at}edited ${Array.isArray(d.files) ? d.files.join(", ") : ""}`;
    case "report":
      return `${at}report: ${String(d.status ?? "")}\n${clip(String(d.summary ?? d.text ?? "").trim())}`;
    case "error":
      return `${at}error: ${String(d.type ?? "")}: ${String(d.message ?? "")}`;
    default:
      return `${at}${event.type}: ${clip(JSON.stringify(event.data ?? null), 500)}`;
  }
}

/** A tree item's label: "task — status". */
export function agentLabel(agent: { task?: string | null; title?: string; status?: string | null }): string {
  const task = (agent.task || agent.title || "(no task)").split("\n")[0]!.trim();
  return `${task.length > 60 ? `${task.slice(0, 59)}…` : task} — ${agent.status ?? "unknown"}`;
}
