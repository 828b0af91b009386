import assert from "node:assert/strict";
import { test } from "node:test";
import { agentLabel, formatAgentEvent } from "../src/agentLog";
import { DEFAULTS, isLocalDefault, isLocalUrl, portOf, serviceCommand, shellQuote, swarmCommand } from "../src/settings";

test("the service command for the workspace, with the settings' endpoint and model; the token in the environment", () => {
  assert.deepEqual(serviceCommand(DEFAULTS, "/w"), {
    command: "corolla", args: ["assistant", "serve", "--port", "8765", "--workspace", "/w"], env: {},
  });
  const s = { ...DEFAULTS, serviceUrl: "http://127.0.0.1:9100", endpoint: " http://h:8000/v1 ", model: "m", token: "T",
              corollaPath: "/venv/bin/corolla" };
  assert.deepEqual(serviceCommand(s, "/w"), {
    command: "/venv/bin/corolla",
    args: ["assistant", "serve", "--port", "9100", "--workspace", "/w", "--endpoint", "http://h:8000/v1", "--model", "m"],
    env: { COROLLA_ASSISTANT_TOKEN: "T" },
  });
});

test("ports, local URLs and the local default endpoint", () => {
  assert.equal(portOf("http://127.0.0.1:8765"), 8765);
  assert.equal(portOf("http://localhost"), 80);
  assert.ok(isLocalUrl("http://localhost:1"));
  assert.ok(!isLocalUrl("http://10.0.0.2:8765"));
  assert.ok(!isLocalUrl("not a url"));
  assert.ok(isLocalDefault("http://127.0.0.1:8000/v1"));
  assert.ok(isLocalDefault("http://localhost:8000/v1/"));
  assert.ok(!isLocalDefault("http://127.0.0.1:9000/v1"));
});

test("the swarm command quotes the corolla path when needed", () => {
  assert.equal(swarmCommand(DEFAULTS), "corolla swarm up qwen2.5-coder-0.5b --servers 2 --api-port 8000");
  assert.equal(shellQuote("/my dir/it's"), `'/my dir/it'\\''s'`);
});

test("agent log lines and tree labels", () => {
  assert.equal(agentLabel({ task: "add tests\nfor x", status: "running" }), "add tests — running");
  assert.equal(agentLabel({ task: null, title: "", status: null }), "(no task) — unknown");
  assert.equal(formatAgentEvent({ type: "tool_call", seq: 3, data: { name: "read_file", arguments: { path: "a.py" } } }),
               '[3] → read_file {"path":"a.py"}');
  assert.equal(formatAgentEvent({ type: "tool_result", seq: 4, data: { name: "run_tests", ok: false, output: "1 failed\n" } }),
               "[4] ← run_tests failed\n1 failed");
  assert.equal(formatAgentEvent({ type: "end", status: "done" }), "— the agent finished: done");
  assert.equal(formatAgentEvent({ type: "mystery", seq: 9, data: { a: 1 } }), '[9] mystery: {"a":1}');
});
