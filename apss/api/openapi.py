"""What the generated OpenAPI document cannot know from the handlers' signatures, added in one
place: the statuses every operation can answer (all in the one error shape of api/errors.py), the
Idempotency-Key request header and the Idempotent-Replayed response header of idempotent routes,
the closed request bodies (unknown fields are refused), the per-channel settings bodies, and the
provider callback's real answers.

Both the JSON document and the schema UI page render through `render_json`, so the two plugins
below are the served document's only source. A route says it is idempotent with
`@post(..., idempotent=True)`, and one that reads a CSV body with `csv_body="<what it is>"` (Litestar
keeps unknown decorator arguments in `handler.opt`)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin

from apss.api.errors import ErrorBody

__all__ = ["RefinedJsonPlugin", "RefinedSwaggerPlugin"]

_METHODS = ("get", "put", "post", "patch", "delete")
_ERROR = {"$ref": "#/components/schemas/ErrorBody"}

# Why each status is answered (the code names are the error body's `code`).
_WHY = {
    "400": "Bad request: a body, parameter or header that does not pass validation (`invalid_request`, "
           "`invalid_idempotency_key`, ...); `param` names the field.",
    "401": "No key, an unknown or rolled key, or a key of the wrong kind (`authentication_error`).",
    "404": "No such object, or another merchant's (`not_found`).",
    "409": "A business refusal (`out_of_stock`, `invalid_state`, ...) or `idempotency_key_in_use` while the "
           "first request with the key runs.",
    "413": "The body is over the size limit (`body_too_large`).",
    "422": "The Idempotency-Key was used with another body (`idempotency_key_reused`).",
    "429": "Over the merchant's request rate (`rate_limited`), or too many failed admin authentications from "
           "this address (`admin_auth_throttled`); retry after the `Retry-After` seconds.",
    "503": "Not ready: the database is not writable or the server is shutting down (`not_ready`).",
}

_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key", "in": "header", "required": False,
    "description": "Makes the request safe to retry: the answer is stored and replayed for the same key and body "
                   "(with `Idempotent-Replayed: true`) for at least 24 h.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[ -~]{1,255}$"},
}
_REPLAYED = {"Idempotent-Replayed": {
    "description": "`true` when this is the stored answer of an earlier request with the same Idempotency-Key.",
    "schema": {"type": "string", "enum": ["true"]}}}

_CALLBACK_ANSWERS = {
    "200": {"description": "Accepted. Alipay: the bare text `success` (`fail` when refused, also 200, as Alipay "
                           "expects); PayPal and Stripe: an empty body; the sandbox: `{\"received\": true}`.",
            "content": {"text/plain": {"schema": {"type": "string", "enum": ["success", "fail"]}},
                        "application/json": {"schema": {"type": "object"}}}},
    "204": {"description": "Accepted (WeChat Pay)."},
    "400": {"description": "Refused: the signature or the body did not verify. WeChat Pay gets "
                           "`{\"code\": \"FAIL\", \"message\": ...}`, Stripe and PayPal an empty body, the sandbox the "
                           "error shape. The provider retries.",
            "content": {"application/json": {"schema": {"type": "object"}}}},
    "404": {"description": "No such merchant or channel (error shape).",
            "content": {"application/json": {"schema": _ERROR}}},
    "413": {"description": _WHY["413"], "content": {"application/json": {"schema": _ERROR}}},
    "503": {"description": _WHY["503"] + " The provider retries.", "content": {"application/json": {"schema": _ERROR}}},
}


class _Refined:
    def render_json(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        state = request.app.state  # one refined document per app, whichever page asks first
        if state.get("refined_openapi") is None:
            state.refined_openapi = msgspec.json.encode(refine(openapi_schema, request.app))
        return state.refined_openapi


class RefinedJsonPlugin(_Refined, JsonRenderPlugin):
    pass


class RefinedSwaggerPlugin(_Refined, SwaggerRenderPlugin):
    pass


def refine(document: dict[str, Any], app: Litestar) -> dict[str, Any]:
    document = msgspec.json.decode(msgspec.json.encode(document))  # a copy: Litestar caches the original
    for path, method, handler in _operations(app):
        operation = document["paths"].get(path, {}).get(method)
        if operation is None:
            continue
        if path.startswith("/v1/channels/{channel}/webhook/"):
            operation["responses"] = _CALLBACK_ANSWERS
            operation["requestBody"] = {"required": True, "description": "The provider's notification, as it sends "
                                        "it (JSON, or a form for Alipay).",
                                        "content": {"*/*": {"schema": {}}}}
            continue
        if csv := handler.opt.get("csv_body"):  # the handler reads the raw body (a `data` parameter is JSON)
            operation["requestBody"] = {"required": True, "description": csv,
                                        "content": {"text/csv": {"schema": {"type": "string"}}}}
        params = handler.parsed_fn_signature.parameters
        idempotent = bool(handler.opt.get("idempotent"))
        statuses = ["400", "503"]
        keyed = "merchant" in params or "admin" in params or "browser" in params  # browser: a publishable key
        if keyed or handler.opt.get("admin_unless_public"):
            statuses.append("401")
        if keyed:  # admin: the token's guessing throttle
            statuses.append("429")
        if "{" in path or "merchant" in params or "browser" in params:  # a request may name an object in its body
            statuses.append("404")
        if method != "get":
            statuses += ["409", "413"]
        if idempotent:
            statuses.append("422")
            operation.setdefault("parameters", []).append(_IDEMPOTENCY_KEY)
            for status, response in operation["responses"].items():
                if status.startswith("2"):
                    response["headers"] = {**response.get("headers", {}), **_REPLAYED}
        responses = operation["responses"]
        for status in sorted(statuses):  # replaces Litestar's own 400 body, which APSS never sends
            responses[status] = {"description": _WHY[status], "content": {"application/json": {"schema": _ERROR}}}
        if "429" in responses:
            responses["429"]["headers"] = {"Retry-After": {"description": "Seconds to wait.",
                                                          "schema": {"type": "integer"}}}
    _, components = msgspec.json.schema_components([ErrorBody], ref_template="#/components/schemas/{name}")
    document["components"]["schemas"].update(components)
    _close_request_bodies(document)
    _channel_settings(document, app)
    return document


def _operations(app: Litestar):
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if not handler.include_in_schema:
                continue
            for method in handler.http_methods:
                if method.lower() in _METHODS:
                    yield route.path_format or "/", method.lower(), handler


def _close_request_bodies(document: dict[str, Any]) -> None:
    """Request structs refuse unknown fields (forbid_unknown_fields): say so in their schemas."""
    schemas = document["components"]["schemas"]
    referenced: set[str] = set()
    for item in document["paths"].values():
        for operation in item.values():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            _collect_refs(body, schemas, referenced)
    for name in referenced:
        if schemas[name].get("type") == "object" and "properties" in schemas[name]:
            schemas[name]["additionalProperties"] = False


def _collect_refs(node: Any, schemas: dict[str, Any], seen: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        if ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            if name not in seen:
                seen.add(name)
                _collect_refs(schemas.get(name), schemas, seen)
        for value in node.values():
            _collect_refs(value, schemas, seen)
    elif isinstance(node, list):
        for value in node:
            _collect_refs(value, schemas, seen)


def _channel_settings(document: dict[str, Any], app: Litestar) -> None:
    """`PUT /v1/channels/{channel}` takes each channel's own fields (channels/<name>: `settings`)."""
    operation = document["paths"].get("/v1/channels/{channel}", {}).get("put")
    if operation is None:
        return
    registry = app.state.services.channels.registry
    variants = []
    for name in registry.names():
        settings = registry.get(name).settings
        variants.append({
            "title": name, "type": "object", "additionalProperties": False,
            "description": f"`PUT /v1/channels/{name}`" + ("" if settings else ": no fields (test merchants only)"),
            "properties": {field: {"type": "string", "minLength": 1,
                                   "description": "secret: sealed at rest, never returned" if s.secret else "not secret"}
                           for field, s in settings.items()},
            "required": sorted(field for field, s in settings.items() if s.required),
        })
    operation["requestBody"] = {"required": True, "description": "The fields of the channel named in the path.",
                                "content": {"application/json": {"schema": {"oneOf": variants}}}}
    for parameter in operation.get("parameters", []):
        if parameter["name"] == "channel":
            parameter["schema"] = {"type": "string", "enum": registry.names()}
