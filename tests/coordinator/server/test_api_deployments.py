"""Approval gates and deployment commands over the API: a real server over a SQLite store
with a run whose `release` job is a canary with gate `go-live` (tests/api_server.py).
Scope and identity attacks: tests/security/test_api_actions.py."""
from __future__ import annotations

from deploy.store import deploy_store_for
from tests.api_server import DEPLOY_RUN, RUN, Server, add_deploy_run


def test_approve_stores_the_token_name_and_the_comment_and_the_first_answer_wins(server: Server) -> None:
    add_deploy_run(server)
    alice = server.tokens.create("alice", "approve")
    bob = server.tokens.create("bob", "admin")
    status, answer, _ = server.request("POST", f"/api/v1/runs/{DEPLOY_RUN}/approvals/go-live", alice,
                                       {"decision": "approve", "comment": "smoke tests green"})
    assert status == 200, answer
    assert answer["decision"] == "approve" and answer["by"] == "alice" and answer["at"].endswith("Z")
    assert answer["comment"] == "smoke tests green" and answer["jobs"] == ["release"]
    stored = deploy_store_for(server.store).gate_answers(DEPLOY_RUN)["go-live"]
    assert stored == {"decision": "approve", "by": "alice", "at": answer["at"], "comment": "smoke tests green"}

    status, body, _ = server.request("POST", f"/api/v1/runs/{DEPLOY_RUN}/approvals/go-live", bob,
                                     {"decision": "reject"})
    assert status == 409 and body["error"]["code"] == "already_decided"
    assert f"already approved by alice at {answer['at']}" in body["error"]["message"]
    assert deploy_store_for(server.store).gate_answers(DEPLOY_RUN)["go-live"]["by"] == "alice"

    status, answer, _ = server.request("POST", f"/api/v1/runs/{DEPLOY_RUN}/approvals/pause-3", bob,
                                       {"decision": "reject"})
    assert status == 200 and answer["decision"] == "reject" and answer["comment"] is None
    assert "comment" not in deploy_store_for(server.store).gate_answers(DEPLOY_RUN)["pause-3"]


def test_unknown_run_or_gate_is_404_and_a_bad_decision_400(server: Server) -> None:
    add_deploy_run(server)
    token = server.tokens.create("alice", "approve")
    status, body, _ = server.request("POST", "/api/v1/runs/20990101-000000-000000/approvals/go-live", token,
                                     {"decision": "approve"})
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body, _ = server.request("POST", f"/api/v1/runs/{DEPLOY_RUN}/approvals/go-lvie", token,
                                     {"decision": "approve"})
    assert (status, body["error"]["code"]) == (404, "unknown_gate")
    assert "no approval gate 'go-lvie' (its gates: go-live, pause-3)" in body["error"]["message"]
    status, body, _ = server.request("POST", f"/api/v1/runs/{RUN}/approvals/go-live", token, {"decision": "approve"})
    assert status == 404 and "(its gates: none)" in body["error"]["message"]
    for bad in ({"decision": "maybe"}, {}, {"decision": "approve", "comment": 5}):
        status, body, _ = server.request("POST", f"/api/v1/runs/{DEPLOY_RUN}/approvals/go-live", token, bad)
        assert (status, body["error"]["code"]) == (400, "bad_request"), bad
    assert deploy_store_for(server.store).gate_answers(DEPLOY_RUN) == {}


def test_abort_and_rollback_are_queued_with_the_token_name(server: Server) -> None:
    add_deploy_run(server)
    token = server.tokens.create("oncall", "approve")
    status, body, _ = server.request("POST", f"/api/v1/runs/{DEPLOY_RUN}/deployments/release/abort", token)
    assert status == 202, body
    assert body["command"] == "abort" and body["by"] == "oncall" and body["queued"] is True
    assert body["message"] == f"abort of release in run {DEPLOY_RUN} queued: the deployment has not started yet"
    deploys = deploy_store_for(server.store)
    deploys.create({"run_id": DEPLOY_RUN, "job": "release", "state": "waiting_approval", "next_tick_at": 0})
    status, body, _ = server.request("POST", f"/api/v1/runs/{DEPLOY_RUN}/deployments/release/rollback", token)
    assert status == 202 and body["state"] == "waiting_approval" and body["queued"] is False
    assert "rolling back means aborting it" in body["notice"]
    assert [(c["type"], c["by"]) for c in deploys.commands(DEPLOY_RUN, "release", 0)] == \
        [("abort", "oncall"), ("rollback", "oncall")]


def test_unknown_job_is_404_and_a_step_job_or_an_ended_deployment_409(server: Server) -> None:
    add_deploy_run(server)
    token = server.tokens.create("oncall", "approve")
    status, body, _ = server.request("POST", f"/api/v1/runs/{DEPLOY_RUN}/deployments/relaese/abort", token)
    assert (status, body["error"]["code"]) == (404, "unknown_job")
    status, body, _ = server.request("POST", f"/api/v1/runs/{DEPLOY_RUN}/deployments/build/abort", token)
    assert (status, body["error"]["code"]) == (409, "not_deployment")
    deploy_store_for(server.store).create({"run_id": DEPLOY_RUN, "job": "release", "state": "succeeded",
                                           "next_tick_at": 0})
    status, body, _ = server.request("POST", f"/api/v1/runs/{DEPLOY_RUN}/deployments/release/rollback", token)
    assert (status, body["error"]["code"]) == (409, "ended")
    assert "already ended (succeeded)" in body["error"]["message"] and "keep_old_for" in body["error"]["message"]
    assert server.request("POST", f"/api/v1/runs/{DEPLOY_RUN}/deployments/release/restart", token)[0] in (404, 405)
    assert deploy_store_for(server.store).commands(DEPLOY_RUN, "release", 0) == []
