"""{{name}}: a Ficus gateway filter written in Python.

Every hook is written out with the default behaviour (continue); change the
ones you need. Build with `ficus plugin build` (componentize-py), which writes
build/{{name}}.wasm. The Python guide (sdk/guides/python.md in the Ficus
repository) covers hooks, config, host capabilities and testing.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.filter_hooks import HookSet
from wit_world.imports import types

# componentize-py creates a new FilterHooks object for every call into the
# component: keep what `configure` sets up in module globals, not on `self`.
CONFIG: dict = {}


class FilterHooks(exports.FilterHooks):
    def configure(self, config: str) -> HookSet:
        """Called once per instance, before any request, with the route's
        `config` table as JSON. `raise Err("message")` rejects the config:
        `ficus check` and the gateway report it with the route."""
        global CONFIG
        parsed = json.loads(config or "{}")
        if not isinstance(parsed, dict):
            raise Err("config: expected a table")
        CONFIG = parsed
        # Which hooks the gateway calls (skipping a hook saves a call).
        return HookSet.ON_REQUEST | HookSet.ON_RESPONSE

    def on_request(self, req: types.Request) -> types.RequestAction:
        """Every request, before the upstream: continue, respond or route."""
        return types.RequestAction_Continue()

    def on_response(
        self, req: types.Request, resp: types.Response, attempt: types.AttemptInfo
    ) -> types.ResponseAction:
        """Every response, on its way back: continue, replace or retry."""
        return types.ResponseAction_Continue()
