// {{name}}: a Ficus gateway filter written in JavaScript.
//
// Every hook is written out with the default behaviour (continue); change the
// ones you need. Build with `ficus plugin build` (componentize-js), which
// writes build/{{name}}.wasm. The JavaScript guide (sdk/guides/javascript.md
// in the Ficus repository) covers hooks, config, host capabilities and testing.

// Set up by `configure`. Module state lives as long as the component instance,
// which the gateway reuses for many requests (one at a time).
let config = {};

export const filterHooks = {
  // Called once per instance, before any request, with the route's `config`
  // table as JSON. Throwing a string rejects the config: `ficus check` and
  // the gateway report it with the route.
  configure(configJson) {
    const parsed = JSON.parse(configJson || '{}');
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw 'config: expected a table';
    }
    config = parsed;
    // Which hooks the gateway calls (skipping a hook saves a call).
    return { onRequest: true, onResponse: true };
  },

  // Every request, before the upstream: { tag: 'continue' },
  // { tag: 'respond', val: { status, headers, body } } or
  // { tag: 'route', val: { cluster, endpointKey } }.
  onRequest(_req) {
    return { tag: 'continue' };
  },

  // Every response, on its way back: { tag: 'continue' },
  // { tag: 'replace', val: { status, headers, body } } or { tag: 'retry', val: delayMs }.
  onResponse(_req, _resp, _attempt) {
    return { tag: 'continue' };
  },
};
