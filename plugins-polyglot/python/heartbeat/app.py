"""heartbeat: a tick plugin in Python, the twin of the Rust fixture
plugins/fixtures/tick-counter.

    [plugins.heartbeat]
    source = "build/heartbeat.wasm"
    grants = ["leader", "log", "metrics"]
    memory_limit_bytes = 67108864   # Python needs more than the 16 MiB default

    [[ticks]]
    name = "beat"
    plugin = "heartbeat"
    every = "10s"
    group = "default"
    config = { label = "edge" }

Every tick runs only on the node that leads the tick's group. Each run checks
that `leader.status(group)` agrees (this node leads with the tick's term),
then adds 1 to the metric `heartbeat_ticks{group,term,label}` and logs
`heartbeat group=G term=T`. A run on a node that is not the leader (it
cannot happen unless leadership was lost mid-tick) fails with an error.

Config: `label` (string, default "default"); unknown keys are rejected.

Build: `ficus plugin build` (componentize-py -d wit -w plugin componentize app
-o build/heartbeat.wasm).
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import leader, log, metrics

# componentize-py creates a new TickHooks object for every call into the
# component, so what `configure` sets up lives in module globals.
LABEL = "default"


class TickHooks(exports.TickHooks):
    def configure(self, config: str) -> None:
        """Validate the tick's config; `raise Err(message)` rejects it."""
        global LABEL
        try:
            cfg = json.loads(config or "{}")
        except ValueError as e:
            raise Err(f"config: not JSON: {e}")
        if not isinstance(cfg, dict):
            raise Err("config: expected a table")
        unknown = sorted(set(cfg) - {"label"})
        if unknown:
            raise Err(f"config.{unknown[0]}: unknown field, expected `label`")
        label = cfg.get("label", "default")
        if not isinstance(label, str) or not label:
            raise Err("config.label: expected a non-empty string")
        LABEL = label

    def on_tick(self, tick) -> None:
        status = leader.status(tick.group)
        if status is None or not status.is_self or status.term != tick.term:
            raise Err(
                f"not the leader per leader.status({tick.group!r}): {status}, tick term {tick.term}"
            )
        labels = [("group", tick.group), ("term", str(tick.term)), ("label", LABEL)]
        try:
            metrics.counter_add("heartbeat_ticks", 1, labels)
        except Err as e:
            raise Err(f"metrics: {e.value}")
        log.log(log.Level.INFO, f"heartbeat group={tick.group} term={tick.term}")
