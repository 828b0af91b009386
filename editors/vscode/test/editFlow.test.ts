import assert from "node:assert/strict";
import { test } from "node:test";
import { EditFlow, type EditHost, type Proposal } from "../src/editFlow";

class FakeHost implements EditHost {
  log: string[] = [];
  pending = false;
  failApply: Error | null = null;
  failAccept: Error | null = null;
  async preview(p: Proposal) { this.log.push(`preview ${p.editId}`); }
  async close(p: Proposal) { this.log.push(`close ${p.editId}`); }
  async apply(p: Proposal) {
    if (this.failApply) throw this.failApply;
    this.log.push(`apply ${p.editId}`);
  }
  async accept(id: string) {
    if (this.failAccept) throw this.failAccept;
    this.log.push(`accept ${id}`);
  }
  async reject(id: string) { this.log.push(`reject ${id}`); }
  setPending(pending: boolean) { this.pending = pending; }
  error(message: string) { this.log.push(`error ${message}`); }
  info(message: string) { this.log.push(`info ${message}`); }
}

const proposal = (editId: string | null): Proposal =>
  ({ editId, changes: [{ path: "app.py", before: "a\n", after: "b\n" }], notes: [] });

test("offer previews and sets the pending key; accept applies, then tells the service, then closes", async () => {
  const host = new FakeHost();
  const flow = new EditFlow(host);
  await flow.offer(proposal("e1"));
  assert.equal(flow.state, "pending");
  assert.equal(host.pending, true);
  assert.equal(await flow.accept(), true);
  assert.deepEqual(host.log, ["preview e1", "apply e1", "accept e1", "close e1"]);
  assert.equal(flow.state, "idle");
  assert.equal(host.pending, false);
  assert.equal(flow.proposal, null);
});

test("discard rejects at the service and closes, applying nothing", async () => {
  const host = new FakeHost();
  const flow = new EditFlow(host);
  await flow.offer(proposal("e2"));
  assert.equal(await flow.discard(), true);
  assert.deepEqual(host.log, ["preview e2", "reject e2", "close e2"]);
  assert.equal(flow.state, "idle");
});

test("accept and discard do nothing when no edit is pending", async () => {
  const host = new FakeHost();
  const flow = new EditFlow(host);
  assert.equal(await flow.accept(), false);
  assert.equal(await flow.discard(), false);
  assert.deepEqual(host.log, []);
});

test("a local proposal (a code block's Apply) is applied without the service", async () => {
  const host = new FakeHost();
  const flow = new EditFlow(host);
  await flow.offer(proposal(null));
  await flow.accept();
  await flow.offer(proposal(null));
  await flow.discard();
  assert.deepEqual(host.log, ["preview null", "apply null", "close null", "preview null", "close null"]);
});

test("a failed apply reports the error, does not accept, and ends the flow", async () => {
  const host = new FakeHost();
  host.failApply = new Error("app.py changed since the edit was proposed");
  const flow = new EditFlow(host);
  await flow.offer(proposal("e3"));
  assert.equal(await flow.accept(), false);
  assert.deepEqual(host.log, ["preview e3", "error Corolla: the edit was not accepted: app.py changed since the edit was proposed",
                              "close e3"]);
  assert.equal(flow.state, "idle");
  assert.equal(host.pending, false);
});

test("the service refusing the accept (409) is reported", async () => {
  const host = new FakeHost();
  host.failAccept = new Error("app.py on disk is not the edit's result");
  const flow = new EditFlow(host);
  await flow.offer(proposal("e4"));
  assert.equal(await flow.accept(), false);
  assert.match(host.log[2]!, /^error .*on disk is not the edit's result/);
});

test("a new proposal discards the pending one first", async () => {
  const host = new FakeHost();
  const flow = new EditFlow(host);
  await flow.offer(proposal("old"));
  await flow.offer(proposal("new"));
  assert.deepEqual(host.log, ["preview old", "reject old", "close old", "preview new"]);
  assert.equal(flow.proposal?.editId, "new");
});

test("buttons of an earlier proposal do not act on the current one", async () => {
  const host = new FakeHost();
  const flow = new EditFlow(host);
  const first = proposal("e5");
  await flow.offer(first);
  await flow.discard();
  await flow.offer(proposal("e6"));
  assert.equal(await flow.accept(first), false);
  assert.equal(flow.state, "pending");
});

test("a proposal without changes is not previewed", async () => {
  const host = new FakeHost();
  const flow = new EditFlow(host);
  await flow.offer({ editId: "e7", changes: [], notes: [] });
  assert.equal(flow.state, "idle");
  assert.deepEqual(host.log, ["info Corolla: the edit changes nothing."]);
});

test("accepting twice at once applies once", async () => {
  const host = new FakeHost();
  const flow = new EditFlow(host);
  await flow.offer(proposal("e8"));
  const results = await Promise.all([flow.accept(), flow.accept()]);
  assert.deepEqual(results.sort(), [false, true]);
  assert.equal(host.log.filter((l) => l.startsWith("apply")).length, 1);
});
