"""api-key: header-based API-key authentication with a per-key request
counter in the gateway's shared state.

The Python twin of plugins-polyglot/rust/api-key: same config, same
behaviour, so the end-to-end tests run one set of assertions on both.

    [plugins.api-key]
    source = "build/api-key.wasm"
    grants = ["state"]
    memory_limit_bytes = 67108864   # Python needs more than the 16 MiB default

    # in a route's pipeline:
    { plugin = "api-key", config = { keys = ["k1", "k2"], header = "x-api-key" } }

* a request whose `header` (default `x-api-key`) holds one of `keys` goes on,
  without the header (the upstream never sees the key); the response gets
  `x-api-key-requests: N`, the number of requests made with that key so far
  (a `state` counter shared by every instance);
* any other request is answered 401 with `www-authenticate: ApiKey`.

Build: `ficus plugin build` (componentize-py -d wit -w plugin componentize app
-o build/api-key.wasm).
"""

import json
import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.filter_hooks import HookSet
from wit_world.imports import state, types

# componentize-py creates a new FilterHooks object for every call into the
# component, so what `configure` sets up lives in module globals.
HEADER = "x-api-key"
KEYS: frozenset = frozenset()

TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")

UNAUTHORIZED = types.ResponseSpec(
    status=401,
    headers=[("content-type", b"text/plain"), ("www-authenticate", b"ApiKey")],
    body=b"missing or unknown API key\n",
)


class FilterHooks(exports.FilterHooks):
    def configure(self, config: str) -> HookSet:
        """Validate the route's config; `raise Err(message)` rejects it."""
        global HEADER, KEYS
        try:
            cfg = json.loads(config or "{}")
        except ValueError as e:
            raise Err(f"config: not JSON: {e}")
        if not isinstance(cfg, dict):
            raise Err("config: expected a table")
        unknown = sorted(set(cfg) - {"header", "keys"})
        if unknown:
            raise Err(f"config.{unknown[0]}: unknown field, expected `header` or `keys`")
        header = cfg.get("header", "x-api-key")
        if not isinstance(header, str) or not TOKEN.match(header):
            raise Err(f"config.header: {header!r} is not a valid header name")
        keys = cfg.get("keys")
        if keys is None:
            raise Err("config: missing field `keys`")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise Err("config.keys: expected a list of strings")
        if not keys:
            raise Err("config.keys: at least one key is required")
        HEADER, KEYS = header, frozenset(keys)
        return HookSet.ON_REQUEST | HookSet.ON_RESPONSE

    def on_request(self, req: types.Request) -> types.RequestAction:
        value = req.header(HEADER)
        key = value.decode("utf-8", "replace") if value is not None else None
        if key not in KEYS:
            return types.RequestAction_Respond(UNAUTHORIZED)
        req.remove_header(HEADER)
        try:
            n = state.increment(f"requests:{key}", 1, None)
            req.set_context("requests", str(n))
        except Err:
            pass  # the state backend is unavailable: no counter header
        return types.RequestAction_Continue()

    def on_response(
        self, req: types.Request, resp: types.Response, attempt: types.AttemptInfo
    ) -> types.ResponseAction:
        n = req.context("requests")
        if n is not None:
            resp.set_header("x-api-key-requests", n.encode())
        return types.ResponseAction_Continue()
