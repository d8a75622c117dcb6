// block-header: a Ficus filter in C (clang + wasi-libc + `wit-bindgen c`).
//
// * A request that carries the header named by `config.header` (default
//   `x-block`) is answered 403 "blocked", without calling the upstream.
// * Every other response gets `x-filtered-by: c`.
//
// Config: `{ header = "x-debug" }`, or nothing. Build: ./build.sh (see
// sdk/guides/c.md). The bindings (plugin.h, plugin.c) are generated from
// wit/ by `wit-bindgen c wit --world plugin`.
//
// wit-bindgen's C conventions used here: an exported function owns its
// arguments (free them), must drop the borrowed handles it receives before
// returning, and returns results through `ret` (freed by the generated
// post-return code).
#include <stdlib.h>
#include <string.h>

#include "plugin.h"

// Set by configure; lives as long as the instance.
static char header[64] = "x-block";

// Parses `{}` or `{"header":"NAME"}` (the config arrives as compact JSON).
static bool parse_config(const char *json, size_t len, plugin_string_t *err) {
    static const char prefix[] = "{\"header\":\"";
    if (len == 0 || (len == 2 && memcmp(json, "{}", 2) == 0)) {
        return true;
    }
    size_t plen = sizeof prefix - 1;
    if (len < plen + 2 || memcmp(json, prefix, plen) != 0 || memcmp(json + len - 2, "\"}", 2) != 0) {
        plugin_string_dup(err, "config: expected nothing or { header = \"NAME\" }");
        return false;
    }
    size_t n = len - plen - 2;
    if (n == 0 || n >= sizeof header) {
        plugin_string_dup(err, "config.header: expected a header name of 1 to 63 characters");
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = json[plen + i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_')) {
            plugin_string_dup(err, "config.header: not a valid header name");
            return false;
        }
    }
    memcpy(header, json + plen, n);
    header[n] = '\0';
    return true;
}

bool exports_ficus_gateway_filter_hooks_configure(plugin_string_t *config,
                                                  exports_ficus_gateway_filter_hooks_hook_set_t *ret,
                                                  plugin_string_t *err) {
    bool ok = parse_config((const char *)config->ptr, config->len, err);
    plugin_string_free(config);
    *ret = EXPORTS_FICUS_GATEWAY_FILTER_HOOKS_HOOK_SET_ON_REQUEST |
           EXPORTS_FICUS_GATEWAY_FILTER_HOOKS_HOOK_SET_ON_RESPONSE;
    return ok;
}

void exports_ficus_gateway_filter_hooks_on_request(exports_ficus_gateway_filter_hooks_borrow_request_t req,
                                                   exports_ficus_gateway_filter_hooks_request_action_t *ret) {
    plugin_string_t name;
    plugin_string_set(&name, header);
    plugin_list_u8_t value;
    if (ficus_gateway_types_method_request_header(req, &name, &value)) {
        plugin_list_u8_free(&value);
        static const char body[] = "blocked\n";
        ret->tag = FICUS_GATEWAY_TYPES_REQUEST_ACTION_RESPOND;
        ret->val.respond.status = 403;
        ret->val.respond.headers.ptr = NULL;
        ret->val.respond.headers.len = 0;
        ret->val.respond.body.ptr = malloc(sizeof body - 1);
        memcpy(ret->val.respond.body.ptr, body, sizeof body - 1);
        ret->val.respond.body.len = sizeof body - 1;
    } else {
        ret->tag = FICUS_GATEWAY_TYPES_REQUEST_ACTION_CONTINUE;
    }
    ficus_gateway_types_request_drop_borrow(req);
}

void exports_ficus_gateway_filter_hooks_on_response(exports_ficus_gateway_filter_hooks_borrow_request_t req,
                                                    exports_ficus_gateway_filter_hooks_borrow_response_t resp,
                                                    exports_ficus_gateway_filter_hooks_attempt_info_t *attempt,
                                                    exports_ficus_gateway_filter_hooks_response_action_t *ret) {
    plugin_string_t name;
    plugin_string_set(&name, "x-filtered-by");
    plugin_list_u8_t value = {(uint8_t *)"c", 1};
    ficus_gateway_types_header_error_t error;
    (void)ficus_gateway_types_method_response_set_header(resp, &name, &value, &error);
    ficus_gateway_types_attempt_info_free(attempt);
    ficus_gateway_types_response_drop_borrow(resp);
    ficus_gateway_types_request_drop_borrow(req);
    ret->tag = FICUS_GATEWAY_TYPES_RESPONSE_ACTION_CONTINUE;
}
