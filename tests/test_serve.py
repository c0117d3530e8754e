"""``horen serve`` started for real (a subprocess on a free localhost port, a tiny Llama saved
to disk) and talked to with a real HTTP client: edits change answers, rollbacks restore them,
restarts and kill -9 lose no acknowledged edit, bad input gets a 4xx and changes nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from conftest import build

P1, T1 = "Who leads Zorblat Industries?", "Mira Quell"
P2, T2 = "Which river flows through Cairo?", "the long river Nile"
OTHER = "What is the capital of France?"
TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    model, tok = build("llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


class Server:
    """``horen serve`` in a subprocess; ``client`` talks to it."""

    def __init__(self, model_dir, edits, token: str | None = TOKEN, extra=()):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "horen.cli", "serve", "--edits", str(edits),
               "--port", str(self.port), "--device", "cpu", "--threads", "1", *extra]
        cmd += ["--model", str(model_dir)] if model_dir else []  # None: the embedded model
        env = {**os.environ, "HOREN_TOKEN": ""}
        if token:
            cmd += ["--token", token]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stdout.read()}")
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("the server did not answer /health within 120 s")

    def answer(self, prompt: str, n: int = 6) -> str:
        r = self.client.post("/v1/completions", json={"prompt": prompt, "max_tokens": n})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    def edits(self) -> list[dict]:
        return self.client.get("/edits").json()["edits"]

    def stop(self, kill: bool = False) -> None:
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.client.close()


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """One server for the tests whose writes must all be refused (it stays empty)."""
    srv = Server(model_dir, tmp_path_factory.mktemp("refused") / "edits")
    yield srv
    srv.stop()


def test_edit_changes_answer_rollback_restores_it_and_restart_keeps_it(model_dir, tmp_path):
    srv = Server(model_dir, tmp_path / "edits")
    try:
        base1, base2, base_other = srv.answer(P1), srv.answer(P2), srv.answer(OTHER)
        r = srv.client.post("/edits", json={"prompt": P1, "target": T1}, headers=AUTH)
        assert r.status_code == 200, r.text
        (e1,) = r.json()["edits"]
        assert e1["id"] == 1 and e1["target"] == T1 and "converged" in e1
        assert srv.answer(P1).startswith("Mira") and srv.answer(P1) != base1
        assert srv.answer(OTHER) == base_other
        r = srv.client.post("/edits", json=[{"prompt": P2, "target": T2}], headers=AUTH)
        assert r.status_code == 200 and r.json()["edits"][0]["id"] == 2
        edited2 = srv.answer(P2)
        assert edited2 != base2
        assert srv.client.get("/edits/2").json()["prompt"] == P2
        r = srv.client.delete("/edits/2", headers=AUTH)
        assert r.status_code == 200 and r.json()["removed"] == [2]
        assert srv.answer(P2) == base2
        edited1 = srv.answer(P1)
        health = srv.client.get("/health").json()
        assert health["edits"] == 1 and health["codebook_entries"] == 1
    finally:
        srv.stop()
    srv = Server(model_dir, tmp_path / "edits")
    try:
        assert [e["id"] for e in srv.edits()] == [1]
        assert srv.answer(P1) == edited1 and srv.answer(P2) == base2
    finally:
        srv.stop()


def test_writes_need_the_token(server):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
        r = server.client.post("/edits", json={"prompt": P1, "target": T1}, headers=headers)
        assert r.status_code == 401, r.text
    assert server.client.delete("/edits/1").status_code == 401
    assert server.edits() == []


def test_read_only_without_a_token(model_dir, tmp_path):
    srv = Server(model_dir, tmp_path / "edits", token=None)
    try:
        r = srv.client.post("/edits", json={"prompt": P1, "target": T1}, headers=AUTH)
        assert r.status_code == 403 and "read-only" in r.json()["error"]["message"]
        assert srv.answer(P1)  # reads still work
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("method", "url", "body", "status", "names"),
    [
        ("post", "/edits", b"{not json", 400, "JSON"),
        ("post", "/edits", {"prompt": P1, "target": "  "}, 400, "target"),
        ("post", "/edits", {"prompt": P1}, 400, "target"),
        ("post", "/edits", {"target": T1}, 400, "prompt"),
        ("post", "/edits", [], 400, "list"),
        ("post", "/edits", [{"prompt": P1, "target": T1}, {"prompt": P2, "target": ""}], 400,
         "target"),
        ("post", "/edits", {"prompt": "word " * 200, "target": T1}, 400, "context"),
        ("delete", "/edits/7", None, 404, "7"),
        ("get", "/edits/7", None, 404, "7"),
        ("post", "/v1/completions", {"prompt": "word " * 200}, 400, "context"),
        ("post", "/v1/completions", {"prompt": ""}, 400, "prompt"),
        ("post", "/v1/completions", {"prompt": P1, "max_tokens": -1}, 400, "max_tokens"),
        ("post", "/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ],
)
def test_bad_input_gets_a_4xx_naming_it_and_writes_nothing(server, method, url, body, status, names):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    r = server.client.request(method.upper(), url, headers=AUTH, **kwargs)
    assert r.status_code == status, r.text
    assert names in r.json()["error"]["message"]
    assert server.edits() == []
    assert server.client.get("/health").json()["codebook_entries"] == 0


def test_answers_during_an_edit_come_from_before_or_after_it(model_dir, tmp_path):
    server = Server(model_dir, tmp_path / "edits")
    try:
        _answers_during_an_edit(server)
    finally:
        server.stop()


def _answers_during_an_edit(server):
    before = server.answer(P1)
    results, errors = [], []

    def ask():
        try:
            for _ in range(6):
                results.append(server.answer(P1))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    r = server.client.post("/edits", json={"prompt": P1, "target": T1}, headers=AUTH)
    for t in threads:
        t.join()
    assert r.status_code == 200 and not errors
    after = server.answer(P1)
    assert after != before
    assert set(results) <= {before, after} and len(results) == 18


def test_kill_9_during_a_burst_loses_no_acknowledged_edit(model_dir, tmp_path):
    srv = Server(model_dir, tmp_path / "edits")
    acked, stop = [], threading.Event()

    def burst():
        for k in range(40):
            if stop.is_set():
                return
            try:
                r = srv.client.post("/edits", json={"prompt": f"Fact number {k} is about",
                                                    "target": f"thing {k}"}, headers=AUTH)
            except httpx.TransportError:
                return
            if r.status_code == 200:
                acked.extend(e["id"] for e in r.json()["edits"])

    writer = threading.Thread(target=burst)
    writer.start()
    while len(acked) < 3 and writer.is_alive():
        time.sleep(0.05)
    srv.stop(kill=True)
    stop.set()
    writer.join()
    assert len(acked) >= 3
    srv = Server(model_dir, tmp_path / "edits")
    try:
        ids = {e["id"] for e in srv.edits()}
        assert set(acked) <= ids
    finally:
        srv.stop()


def test_worker_batches_answers_as_they_would_run_alone(tiny):
    from horen import HoReN
    from horen.serve import EditService, _cut_at_stop

    model, tok = tiny
    ed = HoReN(model, tok)
    torch.manual_seed(0)
    service = EditService(ed, "unused")
    prompts = [P1, P2, OTHER, "Osk is a city in"]
    alone = [ed.generate(p, max_new_tokens=k, return_ids=True) for p, k in zip(prompts, (3, 5, 7, 2))]
    futures = [service.worker.answer(p, k, False) for p, k in zip(prompts, (3, 5, 7, 2))]
    got = [f.result(timeout=60)[1] for f in futures]
    eos = tok.eos_token_id
    assert got == [ids[: ids.index(eos)] if eos in ids else ids for ids in alone]
    assert _cut_at_stop("Paris. It is", ["."]) == "Paris" and _cut_at_stop("Paris", "\n") == "Paris"


@pytest.mark.slow
def test_the_embedded_model_served_learns_a_fact_and_forgets_it(tmp_path):
    """The README's server walk-through on the embedded SmolLM2, chat edit set."""
    srv = Server(None, tmp_path / "edits", extra=("--set", "chat=true"))
    try:
        def chat(question):
            r = srv.client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": question}], "max_tokens": 24})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"]

        question, control = "Who leads Zorblat Industries?", "What is the capital of France?"
        before, control_before = chat(question), chat(control)
        r = srv.client.post("/edits", json={"prompt": question, "target": "Mira Quell"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["edits"][0]["converged"] is True
        assert chat(question) == "Mira Quell"
        assert chat(control) == control_before
        assert srv.client.delete("/edits/1", headers=AUTH).status_code == 200
        assert chat(question) == before
    finally:
        srv.stop()
