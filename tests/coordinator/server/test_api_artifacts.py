"""A run's artifacts over the API: the list, one file streamed and verified as it goes, a
corrupt object cut off rather than delivered, an archived log. Real server, real file
artifact store and SQLite index (tests/api_server.py). Path attacks: tests/security/test_api_actions.py."""
from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.api_server import RUN, Server, object_path, publish_artifact

BIG = bytes(range(256)) * (10 * 1024 + 7)  # ~2.5 MiB: several chunks of the store's 1 MiB reads


def _get(server: Server, path: str, token: str) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    parts = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    return conn.getresponse(), conn


@pytest.fixture
def published(server: Server, tmp_path: Path):
    return publish_artifact(server, RUN, "build", {"dist/app.bin": BIG, "README.md": b"hello\n",
                                                   'we"ird name;.txt': b"x"}, tmp_path / "ws")


def test_the_list_has_every_artifact_with_its_members(server: Server, published) -> None:
    token = server.tokens.create("reader", "read")
    status, items, _ = server.request("GET", f"/api/v1/runs/{RUN}/artifacts", token)
    assert status == 200 and len(items) == 1
    item = items[0]
    assert (item["job"], item["kind"], item["name"], item["files"]) == ("build", "artifact", "build", 3)
    assert item["manifest"] == published.manifest and item["size"] == len(BIG) + 7
    members = {m["path"]: m for m in item["members"]}
    assert members["dist/app.bin"]["digest"] == hashlib.sha256(BIG).hexdigest()
    assert members["dist/app.bin"]["size"] == len(BIG) and members["README.md"]["mode"] & 0o400
    assert server.request("GET", "/api/v1/runs/20990101-000000-000000/artifacts", token)[0] == 404


def test_a_file_streams_with_its_headers(server: Server, published) -> None:
    token = server.tokens.create("reader", "read")
    response, conn = _get(server, f"/api/v1/runs/{RUN}/artifacts/build/dist/app.bin", token)
    body = response.read()
    conn.close()
    assert response.status == 200 and body == BIG
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Length"] == str(len(BIG))
    assert response.headers["Content-Disposition"] == "attachment; filename=\"app.bin\"; filename*=UTF-8''app.bin"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    status, text, headers = server.request("GET", f"/api/v1/runs/{RUN}/artifacts/build/README.md", token)
    assert (status, text) == (200, "hello\n")
    quoted = urllib.parse.quote('we"ird name;.txt', safe="")
    response, conn = _get(server, f"/api/v1/runs/{RUN}/artifacts/build/{quoted}", token)
    assert response.read() == b"x" and response.status == 200
    conn.close()
    # The plain name has no quote, space or semicolon to break the header; the exact one is encoded.
    assert response.headers["Content-Disposition"] == \
        f"attachment; filename=\"we_ird_name_.txt\"; filename*=UTF-8''{quoted}"


def test_missing_members_jobs_and_artifacts_are_404(server: Server, published) -> None:
    token = server.tokens.create("reader", "read")
    for path in ("build/nope.txt", "build/dist", "nojob/README.md", "test/README.md"):
        status, body, _ = server.request("GET", f"/api/v1/runs/{RUN}/artifacts/{path}", token)
        assert (status, body["error"]["code"]) == (404, "not_found"), path


def test_a_small_corrupt_object_is_an_error_not_a_file(server: Server, published) -> None:
    token = server.tokens.create("reader", "read")
    target = object_path(server, hashlib.sha256(b"hello\n").hexdigest())
    os.chmod(target, 0o644)
    target.write_bytes(b"hellO\n")
    status, body, _ = server.request("GET", f"/api/v1/runs/{RUN}/artifacts/build/README.md", token)
    assert (status, body["error"]["code"]) == (502, "corrupt")


def test_a_big_corrupt_object_is_cut_before_its_end(server: Server, published) -> None:
    token = server.tokens.create("reader", "read")
    target = object_path(server, hashlib.sha256(BIG).hexdigest())
    os.chmod(target, 0o644)
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF  # in the last chunk: everything before it has already been sent
    target.write_bytes(bytes(data))
    response, conn = _get(server, f"/api/v1/runs/{RUN}/artifacts/build/dist/app.bin", token)
    assert response.status == 200  # the headers were out before the bytes could be checked
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    conn.close()
    assert len(cut.value.partial) < len(BIG)


def test_an_archived_log_by_its_file_name(server: Server) -> None:
    from shared.artifacts import open_store
    from shared.artifacts.index import ArtifactRecord, open_index
    from shared.artifacts.publish import publish_file

    log = server.settings.data_dir / "build.log"
    log.write_text("line 1\nline 2\n")
    now = time.time()
    publish_file(open_store(server.settings.effective_artifacts_url), open_index(server.settings.effective_state_url),
                 log, ArtifactRecord(run_id=RUN, job="build", kind="log", name="build.log", manifest="", size=0,
                                     files=0, pipeline="api-demo", created_at=now, expire_at=None, last_access=now))
    token = server.tokens.create("reader", "read")
    assert server.request("GET", f"/api/v1/runs/{RUN}/artifacts", token)[1] == []
    status, items, _ = server.request("GET", f"/api/v1/runs/{RUN}/artifacts?all=1", token)
    assert [(i["kind"], i["name"]) for i in items] == [("log", "build.log")] and "members" not in items[0]
    status, text, _ = server.request("GET", f"/api/v1/runs/{RUN}/artifacts/build/build.log?kind=log", token)
    assert (status, text) == (200, "line 1\nline 2\n")
    assert server.request("GET", f"/api/v1/runs/{RUN}/artifacts/build/other.log?kind=log", token)[0] == 404
    assert server.request("GET", f"/api/v1/runs/{RUN}/artifacts/build/build.log?kind=source", token)[0] == 400
