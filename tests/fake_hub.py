"""A fake Hugging Face Hub plugged into huggingface_hub's own HTTP client (httpx2 MockTransport): it answers the
requests a push makes (create_repo, model_info, preupload, LFS, commit, ...) and records the commits, so upload tests
assert exact files and commits offline. Any request it does not know is recorded and fails the test."""

import base64
import hashlib
import json
import re

import httpx2
import pytest
from huggingface_hub import ModelCard, constants, set_client_factory
from huggingface_hub.utils._http import default_client_factory, hf_request_event_hook


TOKEN = "hf_fake_write_token"
REPO = re.compile(r"[^/]+/[^/]+")


def _git_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeHub:
    """The Hub endpoints that create_repo, model_info, hf_hub_download, list_repo_tree and create_commit (preupload,
    LFS batch + PUT, validate-yaml, commit) call, over an in-memory store with per-commit snapshots."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.unexpected: list[str] = []
        self.fail: dict[tuple[str, str], object] = {}  # (method, path regex) -> exception, status code or callable

    # ----- helpers --------------------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> None:
        self.repos[repo_id] = {"private": private, "history": []}
        self._commit(repo_id, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", **files}, {})

    def _commit(self, repo_id: str, files: dict[str, bytes], record: dict) -> str:
        history = self.repos[repo_id]["history"]
        sha = hashlib.sha1(f"{repo_id}{len(history)}".encode()).hexdigest()
        history.append({"sha": sha, "files": files, **record})
        return sha

    def head(self, repo_id: str) -> dict:
        return self.repos[repo_id]["history"][-1]

    def commits(self, repo_id: str) -> list[dict]:
        return self.repos[repo_id]["history"][1:]  # without the repo's initial commit

    def _snapshot(self, repo_id: str, revision: str) -> dict | None:
        for commit in reversed(self.repos[repo_id]["history"]):
            if revision in ("main", commit["sha"]):
                return commit
        return None

    @staticmethod
    def _is_lfs(path: str) -> bool:
        return path.endswith((".safetensors", ".png"))

    def _entry(self, path: str, content: bytes) -> dict:
        entry = {"type": "file", "path": path, "size": len(content), "oid": _git_sha1(content)}
        if self._is_lfs(path):
            entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
        return entry

    # ----- the transport ----------------------------------------------------------------------------------------
    def handle(self, request: httpx2.Request) -> httpx2.Response:
        method, path = request.method, request.url.path
        self.requests.append((method, path))
        for (fail_method, pattern), failure in self.fail.items():
            if method == fail_method and re.search(pattern, path):
                if callable(failure):  # something that happens meanwhile, e.g. another push
                    failure()
                elif isinstance(failure, Exception):
                    raise failure
                else:
                    return httpx2.Response(failure, json={"error": "injected failure"})
        authorised = request.headers.get("authorization") == f"Bearer {TOKEN}"
        if request.url.host == "lfs.fake" and method == "PUT":
            content = request.read()
            self.lfs[hashlib.sha256(content).hexdigest()] = content
            return httpx2.Response(200)
        if path == "/api/repos/create" and method == "POST":
            if not authorised:
                return httpx2.Response(401, json={"error": "Invalid credentials"})
            body = json.loads(request.content)
            repo_id = f"{body['organization'] or 'me'}/{body['name']}"
            if repo_id in self.repos:
                body = {"error": "You already created this model repo", "url": f"https://huggingface.co/{repo_id}"}
                return httpx2.Response(409, json=body)
            self.add_repo(repo_id, {}, private=body.get("visibility") == "private")
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{repo_id}"})
        if path == "/api/agent-harnesses":  # huggingface_hub's user-agent registry, fetched once a day
            return httpx2.Response(200, json={"standardEnvVars": [], "harnesses": {}})
        if path == "/api/validate-yaml" and method == "POST":
            ModelCard(json.loads(request.content)["content"])
            return httpx2.Response(200, json={})
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if match and method == "GET":
            return self._info(match.group(1), match.group(2) or "main", authorised)
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if match and method == "GET":
            snapshot = self._snapshot(match.group(1), match.group(2))
            return httpx2.Response(200, json=[self._entry(p, c) for p, c in sorted(snapshot["files"].items())])
        match = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/([^/]+)", path)
        if match and method == "POST":
            if not authorised:
                return httpx2.Response(401, json={"error": "Invalid credentials"})
            handler = self._preupload if match.group(2) == "preupload" else self._apply_commit
            return handler(match.group(1), request)
        match = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if match and method == "POST":
            objects = json.loads(request.content)["objects"]
            answer = [
                {**o, "actions": {"upload": {"href": f"https://lfs.fake/upload/{o['oid']}"}}}
                for o in objects
                if o["oid"] not in self.lfs
            ]
            return httpx2.Response(200, json={"transfer": "basic", "objects": answer})
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match and method in ("HEAD", "GET"):
            return self._resolve(match.group(1), match.group(2), match.group(3), method)
        self.unexpected.append(f"{method} {request.url}")
        return httpx2.Response(500, json={"error": "unexpected request"})

    def _info(self, repo_id: str, revision: str, authorised: bool) -> httpx2.Response:
        if repo_id not in self.repos or (self.repos[repo_id]["private"] and not authorised):
            return httpx2.Response(404, headers={"X-Error-Code": "RepoNotFound"}, json={"error": "not found"})
        snapshot = self._snapshot(repo_id, revision)
        siblings = [{"rfilename": p} for p in sorted(snapshot["files"])]
        body = {"id": repo_id, "sha": snapshot["sha"], "private": self.repos[repo_id]["private"], "siblings": siblings}
        return httpx2.Response(200, json=body)

    def _resolve(self, repo_id: str, revision: str, filename: str, method: str) -> httpx2.Response:
        snapshot = self._snapshot(repo_id, revision) if repo_id in self.repos else None
        if snapshot is None:
            return httpx2.Response(404, headers={"X-Error-Code": "RepoNotFound"})
        if filename not in snapshot["files"]:
            return httpx2.Response(404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": snapshot["sha"]})
        content = snapshot["files"][filename]
        entry = self._entry(filename, content)
        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
        headers = {"X-Repo-Commit": snapshot["sha"], "ETag": f'"{etag}"', "Content-Length": str(len(content))}
        return httpx2.Response(200, headers=headers, content=b"" if method == "HEAD" else content)

    def _preupload(self, repo_id: str, request: httpx2.Request) -> httpx2.Response:
        files = self.head(repo_id)["files"]
        answer = []
        for item in json.loads(request.content)["files"]:
            existing = files.get(item["path"])
            oid = None
            if existing is not None:
                entry = self._entry(item["path"], existing)
                oid = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
            mode = "lfs" if self._is_lfs(item["path"]) else "regular"
            answer.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return httpx2.Response(200, json={"files": answer})

    def _apply_commit(self, repo_id: str, request: httpx2.Request) -> httpx2.Response:
        lines = [json.loads(line) for line in request.content.decode().splitlines() if line]
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, self.head(repo_id)["sha"]):
            return httpx2.Response(412, json={"error": "parent commit is not the head"})
        files = dict(self.head(repo_id)["files"])
        added, deleted = [], []
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.lfs:
                    return httpx2.Response(422, json={"error": f"LFS object {value['oid']} was never uploaded"})
                files[value["path"]] = self.lfs[value["oid"]]
            elif line["key"] == "deletedFile":
                if files.pop(value["path"], None) is None:
                    return httpx2.Response(404, json={"error": "A file with this name doesn't exist"})
                deleted.append(value["path"])
                continue
            else:
                return httpx2.Response(400, json={"error": f"unsupported operation {line['key']}"})
            added.append(value["path"])
        record = {"message": header["summary"], "added": sorted(added), "deleted": sorted(deleted)}
        sha = self._commit(repo_id, files, record)
        url = f"https://huggingface.co/{repo_id}/commit/{sha}"
        return httpx2.Response(200, json={"commitUrl": url, "commitOid": sha, "pullRequestUrl": None})


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A FakeHub wired into huggingface_hub's HTTP layer, online mode, legacy LFS (hf_xet talks to its own
    servers from Rust, past any Python transport), a token in HF_TOKEN and no token file."""
    fake = FakeHub()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token_file"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    set_client_factory(
        lambda: httpx2.Client(
            transport=httpx2.MockTransport(fake.handle), event_hooks={"request": [hf_request_event_hook]}
        )
    )
    yield fake
    set_client_factory(default_client_factory)
    assert fake.unexpected == [], "the push made requests the fake Hub does not know"
