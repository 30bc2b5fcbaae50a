"""Bearer-token auth: HS256 JWTs whose `sub` is the user; an interceptor that
requires one on every RPC but health and reflection."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import jwt

from genjobs.server.api.status import grpc_status
from genjobs.server.model.caller import Caller, set_current_caller, subject_problem
from genjobs.server.model.errors import ServiceError, unauthenticated

ALGORITHM = "HS256"
# ReportProgress carries its own credential: the attempt token (server/services/progress.py).
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.", "/genjobs.v1.JobService/ReportProgress")


def is_open(method: str) -> bool:
    """Whether an RPC (its gRPC path, /package.Service/Method) needs no bearer token."""
    return method.startswith(OPEN_PREFIXES)


def load_secret(configured: str, data_dir: Path, name: str = "auth_secret") -> str:
    """A signing secret: configured, or made once and kept in the data dir."""
    if configured:
        return configured
    path = data_dir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def make_token(
    secret: str, user: str, admin: bool = False, ttl_seconds: int = 30 * 86400, tier: str = ""
) -> str:
    """An HS256 token for `user`, valid for `ttl_seconds`; `tier` "premium" may ask for PRIORITY_HIGH."""
    problem = subject_problem(user)
    if problem:
        raise ValueError(problem)
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + ttl_seconds}
    if admin:
        claims["role"] = "admin"
    if tier:
        claims["tier"] = tier
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify(secret: str, header: str | None) -> tuple[Caller, float]:
    """The caller of an `authorization` header value and when its token
    expires (epoch seconds), or UNAUTHENTICATED."""
    if not header:
        raise unauthenticated(
            "MISSING_TOKEN", "send 'authorization: Bearer <token>' (genjobs-server token --user NAME)"
        )
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthenticated("MALFORMED_TOKEN", "the authorization header must be 'Bearer <token>'")
    try:
        claims = jwt.decode(
            token.strip(), secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise unauthenticated("TOKEN_EXPIRED", "the token has expired; get a new one") from None
    except jwt.InvalidTokenError as exc:
        raise unauthenticated("INVALID_TOKEN", _why_invalid(exc)) from None
    user = claims.get("sub")
    problem = subject_problem(user)
    if problem:
        raise unauthenticated("INVALID_TOKEN", problem + _GET_A_TOKEN)
    admin, premium = claims.get("role") == "admin", claims.get("tier") == "premium"
    return Caller(user=str(user), admin=admin, premium=premium), float(claims["exp"])


# What is wrong with a token, in the service's words (the JWT library's name
# claims, segments and padding). The first matching class wins.
_INVALID_TOKEN_WORDS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.InvalidSignatureError, "the token was not signed by this server (another data dir or auth secret?)"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAlgorithmError, f"the token must be signed with {ALGORITHM}"),
    (jwt.DecodeError, "this is not a genjobs token: it cannot be read"),
)
_GET_A_TOKEN = "; get one with: genjobs-server token --user NAME"


def _why_invalid(exc: jwt.InvalidTokenError) -> str:
    """The INVALID_TOKEN message for a JWT library error."""
    if isinstance(exc, jwt.MissingRequiredClaimError):
        missing = "names no user" if exc.claim == "sub" else "has no expiry"
        return f"the token {missing}{_GET_A_TOKEN}"
    for kind, words in _INVALID_TOKEN_WORDS:
        if isinstance(exc, kind):
            return words + _GET_A_TOKEN
    return "the token is not valid" + _GET_A_TOKEN


class VerifiedTokens:
    """Tokens already verified, with their callers, until they expire.

    Decoding a JWT costs more CPU than the rest of a SubmitJob on the
    server; a client sends the same token with every call, so each is
    checked once (bounded memory: the cache is dropped when full).
    """

    MAX_ENTRIES = 10_000

    def __init__(self, secret: str) -> None:
        self._secret = secret
        self._known: dict[str, tuple[Caller, float]] = {}

    def caller(self, header: str | None) -> Caller:
        """The caller of an `authorization` header value, or UNAUTHENTICATED."""
        known = self._known.get(header or "")
        if known is not None and known[1] > time.time():
            return known[0]
        caller, expires = verify(self._secret, header)
        if len(self._known) >= self.MAX_ENTRIES:
            self._known.clear()
        self._known[header or ""] = (caller, expires)
        return caller


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks the bearer token before any handler runs, unary and streaming alike."""

    def __init__(self, secret: str) -> None:
        self._tokens = VerifiedTokens(secret)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if is_open(method):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        header = metadata.get("authorization")
        try:
            caller = self._tokens.caller(header if isinstance(header, str) else None)
        except ServiceError as error:
            return _refuse(error, await continuation(handler_call_details))
        set_current_caller(caller)
        return await continuation(handler_call_details)


def _refuse(error: ServiceError, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    """A handler of the same shape as the real one that only aborts with `error`."""
    status = grpc_status(error)

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort_with_status(status)
        yield  # pragma: no cover - makes this an async generator

    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            abort_stream,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return grpc.unary_unary_rpc_method_handler(
        abort,
        request_deserializer=handler.request_deserializer if handler else None,
        response_serializer=handler.response_serializer if handler else None,
    )
