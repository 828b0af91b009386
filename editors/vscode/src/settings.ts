// The extension's settings and the commands it derives from them (pure; read in src/extension.ts).

/** Completions on or off per language id, "*" for the others (as `github.copilot.enable`). */
export type LanguageSwitches = Record<string, boolean>;

export interface Settings {
  serviceUrl: string;
  token: string;
  endpoint: string;
  model: string;
  corollaPath: string;
  autoStart: boolean;
  completions: LanguageSwitches;
  completionDebounceMs: number;
}

export const COMPLETIONS_DEFAULT: LanguageSwitches = { "*": true, plaintext: false, markdown: false, scminput: false };

export const DEFAULTS: Settings = {
  serviceUrl: "http://127.0.0.1:8765",
  token: "",
  endpoint: "",
  model: "",
  corollaPath: "corolla",
  autoStart: true,
  completions: COMPLETIONS_DEFAULT,
  completionDebounceMs: 200,
};

/** Whether completions are on for `languageId`: its own switch, else "*" (on when neither is set). */
export function completionsEnabled(switches: LanguageSwitches | undefined, languageId: string): boolean {
  const s = switches ?? COMPLETIONS_DEFAULT;
  if (Object.prototype.hasOwnProperty.call(s, languageId)) return Boolean(s[languageId]);
  return Object.prototype.hasOwnProperty.call(s, "*") ? Boolean(s["*"]) : true;
}

/** The switches with `languageId` turned the other way (the status-bar item's toggle). */
export function toggleLanguage(switches: LanguageSwitches | undefined, languageId: string): LanguageSwitches {
  return { ...(switches ?? COMPLETIONS_DEFAULT), [languageId]: !completionsEnabled(switches, languageId) };
}

/** A debounce setting as milliseconds within 0..2000 (the default for nonsense). */
export function debounceOf(value: unknown): number {
  const n = typeof value === "number" ? value : Number.NaN;
  return Number.isFinite(n) ? Math.min(Math.max(Math.round(n), 0), 2000) : DEFAULTS.completionDebounceMs;
}

/** The local swarm's API, the service's default endpoint. */
export const LOCAL_ENDPOINT = "http://127.0.0.1:8000/v1";
export const SWARM_MODEL = "qwen2.5-coder-0.5b";

export function portOf(serviceUrl: string): number {
  const url = new URL(serviceUrl);
  if (url.port) return Number(url.port);
  return url.protocol === "https:" ? 443 : 80;
}

/** `corolla assistant serve` for the workspace (the token goes in the environment, not the command line). */
export function serviceCommand(s: Settings, workspace: string): { command: string; args: string[]; env: Record<string, string> } {
  const args = ["assistant", "serve", "--port", String(portOf(s.serviceUrl)), "--workspace", workspace];
  if (s.endpoint.trim()) args.push("--endpoint", s.endpoint.trim());
  if (s.model.trim()) args.push("--model", s.model.trim());
  const env: Record<string, string> = {};
  if (s.token) env.COROLLA_ASSISTANT_TOKEN = s.token;
  return { command: s.corollaPath || "corolla", args, env };
}

/** Whether the service talks to the local swarm's default endpoint (so offering to start it makes sense). */
export function isLocalDefault(endpoint: string): boolean {
  const norm = (u: string) => u.trim().replace(/\/+$/, "").replace("localhost", "127.0.0.1");
  return norm(endpoint) === norm(LOCAL_ENDPOINT);
}

export function swarmCommand(s: Settings): string {
  return `${shellQuote(s.corollaPath || "corolla")} swarm up ${SWARM_MODEL} --servers 2 --api-port 8000`;
}

export function shellQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** Whether `serviceUrl` points at this machine (only then can the extension start the service). */
export function isLocalUrl(serviceUrl: string): boolean {
  try {
    return ["127.0.0.1", "localhost", "[::1]"].includes(new URL(serviceUrl).hostname);
  } catch {
    return false;
  }
}
