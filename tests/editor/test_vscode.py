"""corolla's VS Code extension in a real VS Code (code-server + headless Chromium) against the real
assistant service over a scripted model (issue 8): the workbench loads it, chat streams an answer,
an inline edit is accepted (file on disk) or discarded (nothing changed), Tab / Escape / VS Code's undo,
"Generate Tests" from the editor's context menu writes a test file, an agent's diff is applied from the
Agents view, the Source Control view gets a commit message, the quick fix for a diagnostic (VS Code's own
JSON checker) sends that diagnostic, a chat code block is applied to the selection, and the status bar
says when the service is down and its click starts it again.

Outcomes are checked on disk and through the service, not only on screen. Needs
``make code-server`` and ``make vscode-vsix`` (a missing install or .vsix fails, naming the target); with
``COROLLA_EDITOR_TESTS_OPTIONAL=1`` and no .vsix the module is skipped instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.editor import harness
from tests.editor.harness import wait_until

if not harness.VSIX.is_file() and os.environ.get("COROLLA_EDITOR_TESTS_OPTIONAL") == "1":
    pytest.skip(f"the VS Code extension is not built ({harness.VSIX} missing) and COROLLA_EDITOR_TESTS_OPTIONAL=1: "
                f"{harness.VSIX_HINT} builds it", allow_module_level=True)

pytestmark = pytest.mark.slow

PROPOSAL_TITLE = "Corolla: proposed edit"
PROPOSAL_MESSAGE = re.compile("Accept")


def calc(workspace) -> str:
    return (workspace / "calc.py").read_text()


def only(items: list, what: str):
    assert len(items) == 1, f"expected one {what}, got {items}"
    return items[0]


def keep_screenshot(wb, name: str) -> None:
    """With COROLLA_EDITOR_SCREENSHOTS=DIR, save the page (how the README's pictures are made)."""
    folder = os.environ.get("COROLLA_EDITOR_SCREENSHOTS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        wb.page.screenshot(path=os.path.join(folder, name))


def propose_inline_edit(wb, instruction: str) -> None:
    """Select mean() in calc.py, run Corolla: Inline Edit and wait for the proposal's diff + buttons."""
    wb.open_file("calc.py")
    wb.select_lines(5, 6)
    wb.run_command("Corolla: Inline Edit")
    wb.answer_input(instruction, placeholder="Describe the change")
    wb.tab(PROPOSAL_TITLE).wait_for(timeout=30_000)
    wb.notification_button(PROPOSAL_MESSAGE, "Accept").wait_for(timeout=30_000)


def test_workbench_loads_the_extension_and_sees_the_service(vscode, service):
    wb = vscode.workbench
    assert wb.activity_item.is_visible()
    # the status bar polls /health: the scripted model's name shows once the extension reached the service
    wb.status_bar().filter(has_text="Corolla: scripted").wait_for(timeout=30_000)
    assert service.get("/health")["model_ok"] is True


def test_chat_streams_an_answer(vscode, service, workspace):
    wb = vscode.workbench
    wb.open_file("calc.py")
    chat = wb.chat()
    chat.locator("#prompt").fill(harness.CHAT_QUESTION)
    chat.locator("#send").click()
    answer = chat.locator(".message.assistant").filter(has_text="averages the values")
    answer.wait_for(timeout=30_000)
    assert chat.locator(".message.user").filter(has_text=harness.CHAT_QUESTION).count() == 1
    code = answer.locator("pre").filter(has_text="print(mean([1, 2, 3]))")
    code.wait_for(timeout=10_000)
    for button in ("Copy", "Insert", "Apply"):
        assert answer.get_by_role("button", name=button).count() >= 1, f"no {button} button on the code block"
    wait_until(lambda: chat.locator(".chip").count() > 0, "context chips", 10)
    keep_screenshot(wb, "vscode-chat.png")

    def answered():
        sessions = [s for s in service.sessions("chat") if s["messages"]]
        return sessions and [m["role"] for m in sessions[0]["messages"]] == ["user", "assistant"] and sessions[0]

    session = wait_until(answered, "the service to keep the exchange", 15, detail=lambda: str(service.sessions()))
    user, assistant = session["messages"]
    assert user["content"] == harness.CHAT_QUESTION
    assert assistant["content"].startswith(harness.CHAT_ANSWER)
    assert calc(workspace) == harness.CALC  # a question changes nothing


def test_inline_edit_accepted_is_saved(vscode, service, workspace):
    wb = vscode.workbench
    propose_inline_edit(wb, harness.EDIT_FIX)
    assert calc(workspace) == harness.CALC  # only a proposal so far
    keep_screenshot(wb, "vscode-inline-edit.png")
    wb.notification_button(PROPOSAL_MESSAGE, "Accept").click()
    wait_until(lambda: calc(workspace) == harness.CALC_FIXED, "calc.py to be saved with the fix", 20,
               detail=lambda: calc(workspace))
    edit = wait_until(lambda: (lambda e: e["status"] == "accepted" and e)(only(service.edits("edit"), "edit")),
                      "the service to record the edit as accepted", 15, detail=lambda: str(service.edits()))
    assert edit["files"] == ["calc.py"] and "+        raise ValueError" in edit["diff"]
    wb.tab(PROPOSAL_TITLE).wait_for(state="detached", timeout=10_000)
    assert wb.page.locator(".tabs-container .tab.dirty").count() == 0  # saved, not just changed in the buffer


def test_inline_edit_discarded_changes_nothing(vscode, service, workspace):
    wb = vscode.workbench
    propose_inline_edit(wb, harness.EDIT_RENAME)
    wb.run_command("Corolla: Discard Edit")
    wait_until(lambda: only(service.edits("edit"), "edit")["status"] == "rejected",
               "the service to record the edit as rejected", 15, detail=lambda: str(service.edits()))
    wb.tab(PROPOSAL_TITLE).wait_for(state="detached", timeout=10_000)
    assert calc(workspace) == harness.CALC
    assert wb.page.locator(".tabs-container .tab.dirty").count() == 0
    assert harness.git(workspace, "status", "--porcelain") == ""


def test_generate_tests_from_the_context_menu_writes_a_test_file(vscode, service, workspace):
    wb = vscode.workbench
    wb.open_file("calc.py")
    editor = wb.page.locator(".editor-group-container.active .monaco-editor .view-lines").first
    wb.context_menu_item(editor, "Corolla: Generate Tests")
    accept = wb.notification_button(PROPOSAL_MESSAGE, "Accept")
    accept.wait_for(timeout=30_000)
    test_file = workspace / "tests" / "test_calc.py"
    assert not test_file.exists()  # only a proposal so far
    accept.click()
    wait_until(lambda: test_file.exists() and test_file.read_text().strip() == harness.TESTS_FILE.strip(),
               "tests/test_calc.py to be written", 20)
    edit = wait_until(lambda: (lambda e: e["status"] == "accepted" and e)(only(service.edits(), "edit")),
                      "the service to record the tests as accepted", 15, detail=lambda: str(service.edits()))
    assert edit["files"] == ["tests/test_calc.py"] and edit["command"] == "tests"
    assert calc(workspace) == harness.CALC


def test_agent_runs_and_its_diff_is_applied(vscode, service, workspace):
    wb = vscode.workbench
    wb.run_command("Corolla: Start Agent")
    wb.answer_input(harness.AGENT_TASK)
    agent = wait_until(lambda: (lambda a: a["status"] == "done" and a)(only(service.agents(), "agent")),
                       "the agent to finish", 60, detail=lambda: str(service.agents()))
    assert calc(workspace) == harness.CALC  # the agent worked in its own worktree
    wb.show_corolla()
    row = wb.page.locator(".part.sidebar .monaco-list-row").filter(has_text="EDITOR-AGENT-TASK").filter(
        has_text="done")
    row.first.wait_for(timeout=20_000)
    # the row's context menu applies it (the view redraws only when an agent changes, so the menu stays open)
    wb.context_menu_item(row.first, re.compile(r"Apply Agent"))
    # when the view redraws between the right-click and the click, VS Code hands the command no item and it
    # asks which agent (seen once in CI): answer it with this agent, the outcome on disk is what is checked
    pick = wb.page.locator(".quick-input-widget .monaco-list-row").filter(has_text=agent["id"])
    wait_until(lambda: pick.first.is_visible() or calc(workspace) == harness.CALC_DOCUMENTED,
               "the diff applied or the agent asked for", 20, detail=lambda: calc(workspace))
    if pick.first.is_visible():
        pick.first.click()
    wait_until(lambda: calc(workspace) == harness.CALC_DOCUMENTED, "the agent's diff in calc.py", 20,
               detail=lambda: calc(workspace))
    assert service.get(f"/agents/{agent['id']}")["status"] == "applied"
    assert '+    """Return the sum of a and b."""' in service.get(f"/agents/{agent['id']}")["diff"]


def test_tab_accepts_escape_discards_and_undo_reverts(vscode, service, workspace):
    wb = vscode.workbench
    propose_inline_edit(wb, harness.EDIT_FIX)
    wb.focus_diff_modified()
    wb.page.keyboard.press("Tab")
    wait_until(lambda: calc(workspace) == harness.CALC_FIXED, "Tab to apply and save the edit", 20,
               detail=lambda: calc(workspace))
    wb.tab(PROPOSAL_TITLE).wait_for(state="detached", timeout=10_000)
    # VS Code's own undo reverts the accepted change (the extension applied it as a workspace edit)
    wb.open_file("calc.py")
    wb.page.locator(".editor-group-container.active .monaco-editor .view-lines").first.click()
    wb.page.keyboard.press("Control+z")
    wb.page.keyboard.press("Control+s")
    wait_until(lambda: calc(workspace) == harness.CALC, "undo + save to bring calc.py back", 20,
               detail=lambda: calc(workspace))
    propose_inline_edit(wb, harness.EDIT_RENAME)
    wb.focus_diff_modified()
    wb.page.keyboard.press("Escape")
    wait_until(lambda: [e["status"] for e in service.edits("edit")].count("rejected") == 1,
               "Escape to discard the second edit", 15, detail=lambda: str(service.edits()))
    assert calc(workspace) == harness.CALC


def test_commit_message_fills_the_source_control_input(vscode, service, workspace):
    wb = vscode.workbench
    (workspace / "calc.py").write_text(harness.CALC + "\n\ndef triple(x):\n    return 3 * x\n")
    harness.git(workspace, "add", "calc.py")
    wb.page.keyboard.press("Control+Shift+g")  # the Source Control view, with its message box
    box = wb.page.locator(".scm-editor .view-lines").first
    box.wait_for(timeout=30_000)
    wb.run_command("Corolla: Generate Commit Message")
    wait_until(lambda: box.is_visible() and harness.COMMIT_MESSAGE in box.inner_text().replace("\u00a0", " "),
               "the commit message in the Source Control input", 30,
               detail=lambda: box.inner_text() if box.count() else "no input box")


def test_quick_fix_sends_the_diagnostic_under_the_cursor(vscode, service, workspace):
    wb = vscode.workbench
    config = workspace / "config.json"
    config.write_text(harness.BROKEN_JSON)
    wb.open_file("config.json")
    # VS Code's own JSON support reports the trailing comma; the quick fix for it offers Corolla: Fix
    wb.page.locator(".editor-group-container.active .monaco-editor .squiggly-error").first.wait_for(timeout=30_000)
    wb.select_lines(3, 3)
    wb.quick_fix("Corolla: Fix")
    accept = wb.notification_button(PROPOSAL_MESSAGE, "Accept")
    accept.wait_for(timeout=30_000)
    assert config.read_text() == harness.BROKEN_JSON  # only a proposal so far
    accept.click()
    wait_until(lambda: config.read_text() == harness.FIXED_JSON, "config.json to be saved with the fix", 20,
               detail=config.read_text)
    edit = wait_until(lambda: (lambda e: e["status"] == "accepted" and e)(only(service.edits(), "edit")),
                      "the service to record the fix as accepted", 15, detail=lambda: str(service.edits()))
    assert edit["files"] == ["config.json"] and edit["command"] == "fix"
    asked = only([m for s in service.sessions() for m in s["messages"] if m["role"] == "user"], "question")
    assert asked["content"].startswith("/fix config.json:3: error: Trailing comma"), asked["content"]


def test_chat_code_block_applied_to_the_selection(vscode, service, workspace):
    wb = vscode.workbench
    wb.open_file("calc.py")
    wb.select_lines(5, 6)
    chat = wb.chat()
    chat.locator("#prompt").fill(harness.CHAT_APPLY_QUESTION)
    chat.locator("#send").click()
    answer = chat.locator(".message.assistant").filter(has_text="Raise a ValueError")
    answer.locator("pre").filter(has_text="raise ValueError").wait_for(timeout=30_000)
    answer.get_by_role("button", name="Apply").first.click()
    accept = wb.notification_button(PROPOSAL_MESSAGE, "Accept")
    accept.wait_for(timeout=30_000)
    assert calc(workspace) == harness.CALC  # a preview first
    accept.click()
    wait_until(lambda: calc(workspace) == harness.CALC_FIXED, "the code block to replace mean() in calc.py", 20,
               detail=lambda: calc(workspace))


def test_service_down_shows_and_start_service_brings_it_back(vscode, service, workspace):
    wb = vscode.workbench
    wb.status_bar().filter(has_text="Corolla: scripted").wait_for(timeout=30_000)
    service.proc.stop()
    wb.status_bar().filter(has_text="Corolla: service down").wait_for(timeout=30_000)
    # the item's click runs Corolla: Start Service, which starts `corolla assistant serve` on the same URL
    wb.status_bar().locator(".statusbar-item").filter(has_text="Corolla: service down").first.click()
    wb.status_bar().filter(has_text="Corolla: scripted").wait_for(timeout=60_000)
    health = service.get("/health")
    assert health["model_ok"] is True and Path(health["workspace"]).resolve() == workspace.resolve()
