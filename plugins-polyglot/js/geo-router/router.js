// geo-router: picks the upstream cluster from a request header (e.g. the
// country a CDN or load balancer put in `x-country`).
//
// The JavaScript twin of plugins-polyglot/rust/geo-router: same config, same
// behaviour, so the end-to-end tests run one set of assertions on both.
//
//     [plugins.geo-router]
//     source = "build/geo-router.wasm"
//     timeout_ms = 1000        # the first call of a fresh JS instance is slow
//
//     # in a route's pipeline:
//     { plugin = "geo-router", config = { header = "x-country", routes = { de = "eu", us = "us" } } }
//
// * when the header's value (compared case-insensitively) is a key of
//   `routes`, the request goes to that cluster (`route`) and the response
//   gets `x-routed-to: <cluster>`;
// * otherwise the request goes to the route's own upstream, untouched.
//
// Build: `ficus plugin build` (componentize-js router.js --wit wit
// --world-name plugin -d http -d fetch-event -o build/geo-router.wasm).

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Set by configure. Module state lives as long as the component instance,
// which the gateway reuses for many requests (one at a time).
let header = 'x-country';
let routes = new Map(); // lower-cased header value -> cluster

export const filterHooks = {
  // Validate the route's config (JSON text). Throwing a string rejects it:
  // `ficus check` reports the message with the plugin and route.
  configure(configJson) {
    let cfg;
    try {
      cfg = JSON.parse(configJson || '{}');
    } catch (e) {
      throw `config: not JSON: ${e.message}`;
    }
    if (cfg === null || typeof cfg !== 'object' || Array.isArray(cfg)) {
      throw 'config: expected a table';
    }
    for (const key of Object.keys(cfg)) {
      if (key !== 'header' && key !== 'routes') {
        throw `config.${key}: unknown field, expected \`header\` or \`routes\``;
      }
    }
    const h = cfg.header ?? 'x-country';
    if (typeof h !== 'string' || !TOKEN.test(h)) {
      throw `config.header: ${JSON.stringify(h)} is not a valid header name`;
    }
    if (cfg.routes === undefined) throw 'config: missing field `routes`';
    if (cfg.routes === null || typeof cfg.routes !== 'object' || Array.isArray(cfg.routes)) {
      throw 'config.routes: expected a table of header value -> cluster';
    }
    const table = new Map();
    for (const [value, cluster] of Object.entries(cfg.routes)) {
      if (typeof cluster !== 'string' || cluster === '') {
        throw `config.routes.${value}: expected a cluster name`;
      }
      table.set(value.toLowerCase(), cluster);
    }
    if (table.size === 0) throw 'config.routes: at least one route is required';
    header = h;
    routes = table;
    return { onRequest: true, onResponse: true };
  },

  onRequest(req) {
    const value = req.header(header);
    if (value === undefined) return { tag: 'continue' };
    const cluster = routes.get(decoder.decode(value).trim().toLowerCase());
    if (cluster === undefined) return { tag: 'continue' };
    req.setContext('routed-to', cluster);
    return { tag: 'route', val: { cluster, endpointKey: undefined } };
  },

  onResponse(req, resp, _attempt) {
    const cluster = req.context('routed-to');
    if (cluster !== undefined) resp.setHeader('x-routed-to', encoder.encode(cluster));
    return { tag: 'continue' };
  },
};
