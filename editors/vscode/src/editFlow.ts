// The inline-edit state machine: one proposal at a time, previewed, then accepted or discarded.
// Pure logic; the VS Code side (diff editors, WorkspaceEdit, context key) is the injected host.

import type { FileChange } from "./types";

export interface Proposal {
  /** The service's edit id; null for a local proposal (a chat code block's Apply). */
  editId: string | null;
  changes: FileChange[];
  notes: string[];
}

export interface EditHost {
  /** Show the proposal (diff editors, buttons). */
  preview(proposal: Proposal): Promise<void>;
  /** Close what preview opened. */
  close(proposal: Proposal): Promise<void>;
  /** Apply the changes in the editor (so its undo works) and save; throws when they cannot be applied. */
  apply(proposal: Proposal): Promise<void>;
  /** Tell the service (edit accepted after `apply`, or rejected). */
  accept(editId: string): Promise<unknown>;
  reject(editId: string): Promise<unknown>;
  setPending(pending: boolean): void;
  error(message: string): void;
  info(message: string): void;
}

export type EditPhase = "idle" | "pending" | "accepting" | "discarding";

export class EditFlow {
  private phase: EditPhase = "idle";
  private current: Proposal | null = null;

  constructor(private readonly host: EditHost) {}

  get state(): EditPhase {
    return this.phase;
  }
  get proposal(): Proposal | null {
    return this.current;
  }

  /** Preview a new proposal; one still pending is discarded first. */
  async offer(proposal: Proposal): Promise<void> {
    if (!proposal.changes.length) {
      this.host.info("Corolla: the edit changes nothing.");
      return;
    }
    if (this.phase === "pending") await this.discard();
    if (this.phase !== "idle") {
      this.host.error("Corolla: another edit is still being applied; try again in a moment.");
      return;
    }
    this.current = proposal;
    this.phase = "pending";
    this.host.setPending(true);
    try {
      await this.host.preview(proposal);
    } catch (error) {
      this.host.error(`Corolla: cannot show the edit: ${messageOf(error)}`);
      await this.finish(proposal);
    }
  }

  /** Accept the pending proposal (ignored unless `proposal` is the pending one, when given). */
  async accept(proposal?: Proposal): Promise<boolean> {
    const p = this.current;
    if (this.phase !== "pending" || !p || (proposal && proposal !== p)) return false;
    this.phase = "accepting";
    let ok = false;
    try {
      await this.host.apply(p);
      if (p.editId) await this.host.accept(p.editId);
      ok = true;
    } catch (error) {
      this.host.error(`Corolla: the edit was not accepted: ${messageOf(error)}`);
    }
    await this.finish(p);
    return ok;
  }

  /** Discard the pending proposal (ignored unless `proposal` is the pending one, when given). */
  async discard(proposal?: Proposal): Promise<boolean> {
    const p = this.current;
    if (this.phase !== "pending" || !p || (proposal && proposal !== p)) return false;
    this.phase = "discarding";
    try {
      if (p.editId) await this.host.reject(p.editId);
    } catch (error) {
      this.host.error(`Corolla: ${messageOf(error)}`);
    }
    await this.finish(p);
    return true;
  }

  private async finish(p: Proposal): Promise<void> {
    this.current = null;
    this.phase = "idle";
    this.host.setPending(false);
    try {
      await this.host.close(p);
    } catch {
      // the preview may already be closed
    }
  }
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
