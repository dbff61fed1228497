"""An OpenAI-compatible chat-completions endpoint backed by the trainer's policy.

For agents that are not LangChain-based: anything that talks to an `openai` client with
`base_url` set can be trained. Each attempt opens a session; the agent gets a base_url
that names it (`http://127.0.0.1:PORT/sessions/<id>/v1`), so the agent's code needs no
change. A session id may also come in an `X-Session-Id` header or the body's `user` field
on the plain `/v1/chat/completions` route. Every call is recorded token-exactly into the
session's attempt (erl.agents.recorder).

    async def my_agent(base_url, task):          # the user's agent, as it was
        client = AsyncOpenAI(base_url=base_url, api_key="unused")
        ...
        return final_answer

    runner = OpenAIAttemptRunner(my_agent, reward_fn=my_reward)
    workflow = ErlWorkflow(policy=policy, config=erl_config, runner=runner)

The server runs uvicorn in a background thread, bound to 127.0.0.1 unless told otherwise;
each generation is handed back to the event loop the attempt runs on (the policy's
batching engine lives there). Sampling temperature belongs to the trainer: a request's
`temperature` is ignored, its `max_tokens` can only lower the trainer's limit.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from erl.agents.messages import normalize_messages
from erl.agents.recorder import (
    AttemptRecorder,
    ContextLimitExceeded,
    StepLimitExceeded,
    agent_error,
    close_attempt,
)
from erl.core.config import check_placement
from erl.core.interfaces import Policy, SamplingParams
from erl.core.types import Trajectory

SESSION_HEADER = "x-session-id"


class ChatRequest(BaseModel):
    """The part of the chat-completions request body this server honours; other fields
    (seed, logprobs, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[dict] = Field(min_length=1)
    tools: list[dict] | None = None
    tool_choice: Any = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    user: str | None = None


def _error(status: int, message: str, code: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status_code=status)


MAX_BODY_BYTES = 8 * 2**20  # a chat past the trainer's context is megabytes short of this
SHOWN_ID_CHARS = 16  # an error echoes this much of an unknown session id, not the whole input


class BodyError(ValueError):
    """A request the server refuses: the HTTP status, a message and an OpenAI error code."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status, self.code = status, code


def parse_chat_body(raw: bytes) -> tuple[ChatRequest, list[dict]]:
    """The request body -> (request, canonical messages), or BodyError; never another
    exception, in time linear in the body (it is untrusted: any bytes may arrive)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser
        raise BodyError(400, "the request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise BodyError(400, "the request body must be a JSON object", "invalid_body")
    try:  # "\ud800" is valid JSON but no text: the tokenizer would fail on it later
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise BodyError(400, "the request body is nested too deeply", "invalid_body") from None
    except UnicodeEncodeError:
        raise BodyError(400, "the request body holds a lone surrogate (\\ud800-\\udfff): not valid Unicode",
                        "invalid_unicode") from None
    try:
        req = ChatRequest.model_validate(body)
        messages = normalize_messages(req.messages)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise BodyError(400, f"{where}: {first.get('msg', 'invalid')}", "invalid_body") from None
    except ValueError as e:
        raise BodyError(400, str(e), "invalid_messages") from None
    if req.stream:
        raise BodyError(400, "stream=true is not supported by the erl policy server", "unsupported")
    return req, messages


def shown_id(sid: str) -> str:
    return repr(sid if len(sid) <= SHOWN_ID_CHARS else sid[:SHOWN_ID_CHARS] + "...")


class PolicyServer:
    """uvicorn + FastAPI in a daemon thread. `start()` returns once it accepts connections."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, model_name: str = "erl-policy",
                 start_timeout_s: float = 30.0, max_body_bytes: int = MAX_BODY_BYTES):
        self.host, self.port, self.model_name = host, port, model_name
        self.max_body_bytes = max_body_bytes  # larger bodies get a 413 before they are read whole
        self.start_timeout_s = start_timeout_s
        self.sessions: dict[str, AttemptRecorder] = {}  # session id -> its attempt
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    # ---- sessions ---------------------------------------------------------------------
    def open_session(self, recorder: AttemptRecorder) -> str:
        sid = uuid.uuid4().hex
        with self._lock:
            self.sessions[sid] = recorder
        return sid

    def close_session(self, sid: str) -> None:
        with self._lock:
            self.sessions.pop(sid, None)

    def base_url(self, sid: str | None = None) -> str:
        root = f"http://{self.host}:{self.port}"
        return f"{root}/sessions/{sid}/v1" if sid else f"{root}/v1"

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> PolicyServer:
        if self._thread is not None:
            return self
        config = uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning",
                                lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="erl-openai-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the policy server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]  # port 0: the OS chose one
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._server, self._thread = None, None

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- HTTP -------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI(title="erl policy", docs_url=None, redoc_url=None, openapi_url=None)

        @app.post("/v1/chat/completions")
        async def completions(request: Request):
            return await self._complete(request, None)

        @app.post("/sessions/{sid}/v1/chat/completions")
        async def session_completions(sid: str, request: Request):
            return await self._complete(request, sid)

        @app.get("/v1/models")
        @app.get("/sessions/{sid}/v1/models")
        async def models(sid: str | None = None):
            return {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "erl"}]}

        return app

    async def _read_body(self, request: Request) -> bytes:
        """The body, at most max_body_bytes of it (a declared or streamed larger one: 413)."""
        too_big = BodyError(413, f"the request body is larger than {self.max_body_bytes} bytes", "body_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def _complete(self, request: Request, sid: str | None):
        try:
            req, messages = parse_chat_body(await self._read_body(request))
        except BodyError as e:
            return _error(e.status, str(e), e.code)
        sid = sid or request.headers.get(SESSION_HEADER) or req.user
        if not sid:
            return _error(400, "no session: use the base_url of an attempt, an X-Session-Id header or `user`",
                          "no_session")
        with self._lock:
            recorder = self.sessions.get(sid)
        if recorder is None:
            return _error(404, f"unknown or closed session {shown_id(sid)}", "unknown_session")
        limit = req.max_completion_tokens or req.max_tokens
        # The policy's batching engine lives on the attempt's event loop: generate there.
        future = asyncio.run_coroutine_threadsafe(recorder.complete(messages, req.tools, limit), recorder.loop)
        try:
            reply, gen = await asyncio.wrap_future(future)
        except (StepLimitExceeded, ContextLimitExceeded) as e:
            return _error(400, str(e), "attempt_limit")
        except ValueError as e:  # e.g. a chat template that cannot render this chat
            return _error(400, str(e), "invalid_messages")
        except Exception as e:  # the policy failed; the attempt's runner re-raises it
            return _error(500, f"generation failed: {type(e).__name__}", "generation_failed")
        n_prompt = len(recorder.traj.steps[-1].prompt_ids)
        message: dict = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = [{"id": c["id"], "type": "function",
                                      "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}}
                                     for c in reply.tool_calls]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": req.model or self.model_name,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": "tool_calls" if reply.tool_calls else gen.finish_reason}],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(gen.token_ids),
                      "total_tokens": n_prompt + len(gen.token_ids)},
        }


class OpenAIAttemptRunner:
    """AttemptRunner for an agent that talks to an OpenAI-compatible endpoint.

    agent_fn(base_url, task) -> final answer (str): sync (run in a worker thread) or async.
    reward_fn(task, answer) -> reward, (reward, feedback) or {"reward", "feedback"}.
    server: a started PolicyServer to share; by default one is started on first use on
        127.0.0.1 with a free port (`close()` stops it).
    The reflection is placed into the chat the agent sends (see LangGraphAttemptRunner).
    max_context_tokens: a longer chat ends the attempt (a 400 to the agent); None takes the
        workflow's (the trainer's max_context_tokens), else recorder.DEFAULT_MAX_CONTEXT_TOKENS.
    """

    def __init__(self, agent_fn: Callable, reward_fn: Callable[[dict, str], Any], *,
                 server: PolicyServer | None = None, placement: Any = None, max_model_calls: int | None = None,
                 success_threshold: float = 1.0, timeout_s: float | None = None,
                 max_context_tokens: int | None = None, max_workers: int = 64):
        self.agent_fn, self.reward_fn = agent_fn, reward_fn
        self.server, self._own_server = server, server is None
        self.placement, self.max_model_calls = check_placement(placement), max_model_calls
        self.success_threshold, self.timeout_s = success_threshold, timeout_s
        self.max_context_tokens = max_context_tokens
        # Synchronous agents each hold a thread while they wait on HTTP: a pool sized for
        # many concurrent episodes, not the default executor's few threads.
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="erl-agent")

    def close(self) -> None:
        if self._own_server and self.server is not None:
            self.server.stop()
            self.server = None
        self._executor.shutdown(wait=False)

    async def __call__(self, task: dict, *, name: str, guidance: str | None, policy: Policy,
                       chat: Any, params: SamplingParams, config: Any) -> Trajectory:
        if self.server is None:
            self.server = PolicyServer().start()
        recorder = AttemptRecorder(policy, chat, params, name=name, task=task, guidance=guidance,
                                   placement=self.placement or config.reflection_placement,
                                   max_calls=self.max_model_calls or config.max_turns,
                                   max_context_tokens=self.max_context_tokens)
        sid = self.server.open_session(recorder)
        base_url = self.server.base_url(sid)
        answer, error = "", None
        try:
            if inspect.iscoroutinefunction(self.agent_fn):
                run = self.agent_fn(base_url, task)
            else:
                run = asyncio.get_running_loop().run_in_executor(self._executor, self.agent_fn, base_url, task)
            result = await asyncio.wait_for(run, self.timeout_s) if self.timeout_s else await run
            answer = "" if result is None else str(result)
        except Exception as e:  # the agent's own failure: a bad attempt, unless the policy failed
            if recorder.fatal is not None:
                raise recorder.fatal from None
            error = agent_error(e, self.timeout_s)
        finally:
            self.server.close_session(sid)
        return close_attempt(recorder, self.reward_fn, task, answer, error, self.success_threshold,
                             fallback_messages=None)
