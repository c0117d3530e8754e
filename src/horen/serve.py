"""``horen serve``: one edited model over HTTP, its edits added, listed and rolled back live.

The API is OpenAI-compatible for answers (``POST /v1/completions``, ``POST
/v1/chat/completions``, ``GET /v1/models``: greedy decoding, non-streaming) and has its own
routes for edits (``POST /edits``, ``GET /edits``, ``GET /edits/{id}``, ``DELETE
/edits/{id}?cascade=true``) and for health (``GET /health``).

One worker thread owns the model (:class:`ModelWorker`): requests queue to it and run one at a
time, so a request is answered either before an edit or after it, never in between, and
answers queued back to back run as one batched ``generate``. An edit is saved to the edit-set
directory (atomically, :meth:`horen.Editor.save`) before its response is sent: a server killed
at any moment has every acknowledged edit on disk, and loads them on its next start. A write
that fails leaves nothing behind (in memory or on disk).

Writes need ``Authorization: Bearer <token>`` (``--token`` or ``HOREN_TOKEN``); a server
started without a token is read-only.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

log = logging.getLogger("horen.serve")
MAX_BATCH = 16
"""Answers queued back to back are generated together, this many at most."""


class RequestError(ValueError):
    """A client's mistake: answered with ``status`` and the message (never a 500)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ModelWorker:
    """The thread that runs every model call, in the order requests arrive.

    :meth:`answer` jobs waiting together at the head of the queue run as one batch; any other
    job (:meth:`call`) runs alone, after the jobs queued before it and before those after it.
    """

    def __init__(self, editor) -> None:
        self.editor = editor
        self.jobs: collections.deque = collections.deque()
        self.ready = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="horen-model", daemon=True)
        self.thread.start()

    def call(self, fn, *args) -> Future:
        """Run ``fn(*args)`` on the worker; its result (or exception) in the future."""
        return self._put(("call", (fn, args), Future()))

    def answer(self, prompt: str, max_tokens: int, chat: bool) -> Future:
        """Greedy answer ``(text, new token ids up to the end token, finish reason)``."""
        return self._put(("answer", (prompt, max_tokens, chat), Future()))

    def _put(self, job) -> Future:
        with self.ready:
            self.jobs.append(job)
            self.ready.notify()
        return job[2]

    def _run(self) -> None:
        while True:
            with self.ready:
                while not self.jobs:
                    self.ready.wait()
                kind, payload, future = self.jobs.popleft()
                batch = [(payload, future)]
                while kind == "answer" and self.jobs and self.jobs[0][0] == "answer" \
                        and len(batch) < MAX_BATCH:
                    _, payload, future = self.jobs.popleft()
                    batch.append((payload, future))
            if kind == "call":
                (fn, args), future = batch[0]
                _settle(future, fn, *args)
            else:
                for chat in (False, True):
                    group = [(p, f) for p, f in batch if p[2] == chat]
                    if group:
                        self._answer_group(group, chat)

    def _answer_group(self, group, chat: bool) -> None:
        prompts = [p for (p, _, _), _ in group]
        budgets = [k for (_, k, _), _ in group]
        try:
            rows = self.editor.generate(prompts, max_new_tokens=budgets, return_ids=True, chat=chat)
        except Exception as err:  # noqa: BLE001 - handed to each waiting request
            for _, future in group:
                future.set_exception(err)
            return
        eos = self.editor.eos_ids
        for ((prompt, budget, _), future), ids in zip(group, rows):
            cut = next((k for k, t in enumerate(ids) if t in eos), None)
            text = self.editor.tokenizer.decode(ids[:cut], skip_special_tokens=True).strip()
            finish = "stop" if cut is not None or len(ids) < budget else "length"
            future.set_result((text, ids[:cut], finish))


def _settle(future: Future, fn, *args) -> None:
    try:
        future.set_result(fn(*args))
    except BaseException as err:  # noqa: BLE001 - raised again in the request's handler
        future.set_exception(err)


class EditService:
    """The live edit set: the editor, its directory, and the rules every write follows.

    Args:
        editor: the editor (loaded from ``path`` or new).
        path: the edit-set directory; every accepted write is saved there before it returns.
    """

    def __init__(self, editor, path: str | os.PathLike) -> None:
        self.editor, self.path = editor, Path(path)
        self.worker = ModelWorker(editor)
        self.started = time.time()
        self.context = _context_length(editor)
        self.requests = 0
        self.name = editor.model_name

    # ---- writes (run on the worker thread) ---------------------------------------------
    def add(self, records: list) -> list[dict]:
        """Apply ``records`` in order and save; all of them or none (nothing is left behind)."""
        for r in records:
            self.check_prompt(r.prompt, "prompt", extra=len(self.editor.tokenizer(r.target).input_ids))
        done = []
        try:
            for r in records:
                done.append(self.editor.apply(r))
            self.editor.save(self.path)
        except BaseException:
            for eid in reversed(done):  # undo what this request wrote before the failure
                self.editor.remove(eid, cascade=True)
            raise
        by_id = {e["id"]: e for e in self.editor.edits}
        return [_public(by_id[eid]) for eid in done]

    def remove(self, edit_id: int, cascade: bool) -> list[int]:
        """Roll back one edit (and, with ``cascade``, those built on it), then save."""
        if edit_id not in {e["id"] for e in self.editor.edits}:
            raise RequestError(f"no edit with id {edit_id}", 404)
        try:
            removed = self.editor.remove(edit_id, cascade=cascade)
        except ValueError as err:
            raise RequestError(str(err), 409) from err
        try:
            self.editor.save(self.path)
        except BaseException:
            self.reload()  # the rollback is not on disk: go back to what is
            raise
        return removed

    def reload(self) -> None:
        """Replace the live editor by the edit set on disk (after a failed save)."""
        from .editors.base import Editor

        model, tok = self.editor.model, self.editor.tokenizer
        self.editor.close()
        self.editor = self.worker.editor = Editor.load(model, tok, self.path)

    # ---- checks ----------------------------------------------------------------------------
    def check_prompt(self, prompt: str, field: str, extra: int = 0, chat: bool | None = None) -> int:
        """The prompt's token count; a 400 naming ``field`` if it does not fit the model."""
        from .text import encode_prompt

        chat = self.editor.config.chat if chat is None else chat
        try:
            n = len(encode_prompt(self.editor.tokenizer, prompt, chat))
        except ValueError as err:
            raise RequestError(f"{field}: {err}") from err
        if self.context and n + extra > self.context:
            raise RequestError(
                f"{field}: {n} prompt tokens + {extra} more exceed the model's context of "
                f"{self.context} tokens"
            )
        return n

    def health(self) -> dict:
        ed = self.editor
        codebook = getattr(ed, "codebook", None)
        return {
            "status": "ok",
            "model": self.name,
            "method": ed.method,
            "edits": len(ed.edits),
            "codebook_entries": None if codebook is None else len(codebook),
            "edits_dir": str(self.path),
            "uptime_s": round(time.time() - self.started, 1),
            "requests": self.requests,
        }


def _public(edit: dict) -> dict:
    """An edit-log entry as the API returns it (JSON types only)."""
    return {k: v for k, v in edit.items() if isinstance(v, str | int | float | bool | list | dict)
            or v is None}


def _context_length(editor) -> int | None:
    cfg = editor.model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    return None


def create_app(service: EditService, token: str | None = None):
    """The FastAPI app serving ``service``; write routes need ``token`` (None: read-only)."""
    from .data._common import DatasetError, Row
    from .data.plain import convert_plain

    app = FastAPI(title="horen", description=__doc__.split("\n")[0])

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, err: RequestError):
        return JSONResponse({"error": {"message": str(err), "type": "invalid_request_error"}},
                            status_code=err.status)

    @app.middleware("http")
    async def _log_line(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        service.requests += 1
        log.info("%s %s %d %.0f ms", request.method, request.url.path, response.status_code,
                 1000 * (time.perf_counter() - start))
        return response

    def need_token(request: Request) -> None:
        if token is None:
            raise RequestError("this server is read-only: start it with --token to allow edits", 403)
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise RequestError("missing or wrong bearer token", 401)

    async def on_worker(fn, *args):
        return await asyncio.wrap_future(service.worker.call(fn, *args))

    async def body_of(request: Request) -> Any:
        try:
            return await request.json()
        except ValueError as err:
            raise RequestError(f"the request body is not valid JSON: {err}") from err

    @app.get("/health")
    async def health():
        return service.health()

    @app.get("/v1/models")
    async def models():
        return {"object": "list",
                "data": [{"id": service.name, "object": "model", "owned_by": "horen"}]}

    @app.get("/edits")
    async def list_edits():
        return {"edits": [_public(e) for e in service.editor.list_edits()]}

    @app.get("/edits/{edit_id}")
    async def get_edit(edit_id: int):
        for e in service.editor.list_edits():
            if e["id"] == edit_id:
                return _public(e)
        raise RequestError(f"no edit with id {edit_id}", 404)

    @app.post("/edits")
    async def add_edits(request: Request):
        need_token(request)
        body = await body_of(request)
        items = body if isinstance(body, list) else [body]
        if not items or not all(isinstance(x, dict) for x in items):
            raise RequestError("the body must be an edit object or a non-empty list of them")
        records = []
        for i, item in enumerate(items):
            try:
                records.append(convert_plain(Row(item, Path("request"), i)))
            except (DatasetError, ValueError) as err:
                raise RequestError(str(err)) from err
        try:
            added = await on_worker(service.add, records)
        except ValueError as err:  # a subject not in its prompt, a bad setting...
            raise RequestError(str(err)) from err
        return {"edits": added}

    @app.delete("/edits/{edit_id}")
    async def delete_edit(edit_id: int, request: Request, cascade: bool = False):
        need_token(request)
        removed = await on_worker(service.remove, edit_id, cascade)
        return {"removed": removed, "edits": len(service.editor.edits)}

    async def answer(prompt: Any, max_tokens: Any, chat: bool, field: str):
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestError(f"{field} must be a non-empty string")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise RequestError("max_tokens must be a positive integer")
        n = service.check_prompt(prompt, field, extra=max_tokens, chat=chat)
        text, ids, finish = await asyncio.wrap_future(service.worker.answer(prompt, max_tokens, chat))
        usage = {"prompt_tokens": n, "completion_tokens": len(ids), "total_tokens": n + len(ids)}
        return text, finish, usage

    def envelope(kind: str, choice: dict, usage: dict) -> dict:
        return {"id": f"horen-{time.time_ns()}", "object": kind, "created": int(time.time()),
                "model": service.name, "choices": [choice], "usage": usage}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await body_of(request)
        if not isinstance(body, dict):
            raise RequestError("the body must be a JSON object")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        text, finish, usage = await answer(prompt, body.get("max_tokens", 48), False, "prompt")
        text = _cut_at_stop(text, body.get("stop"))
        choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return envelope("text_completion", choice, usage)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await body_of(request)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) for m in messages):
            raise RequestError("messages must be a non-empty list of {role, content} objects")
        turns = [m for m in messages if m.get("role") != "system"]
        if len(turns) != 1 or turns[0].get("role") != "user":
            raise RequestError("messages: one user message is supported (no multi-turn yet)")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 48))
        text, finish, usage = await answer(turns[0].get("content"), max_tokens, True,
                                           "messages[].content")
        text = _cut_at_stop(text, body.get("stop"))
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": finish}
        return envelope("chat.completion", choice, usage)

    return app


def _cut_at_stop(text: str, stop: Any) -> str:
    """The answer up to its first stop string (OpenAI's ``stop``: a string or a list)."""
    stops = [stop] if isinstance(stop, str) else [s for s in stop or [] if isinstance(s, str)]
    cuts = [text.find(s) for s in stops if s and s in text]
    return text[: min(cuts)] if cuts else text
