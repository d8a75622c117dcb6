//! HTTP helpers shared by the Rust `wasi:http` handler plugins (request
//! bodies in, responses out). Included with `#[path]` by each plugin.

use std::io::{Read as _, Write as _};
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse,
    ResponseOutparam,
};

/// The whole request body.
pub fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, String> {
    let body = request
        .consume()
        .map_err(|()| "request body already consumed".to_string())?;
    let mut bytes = Vec::new();
    {
        let mut stream = body
            .stream()
            .map_err(|()| "request body stream unavailable".to_string())?;
        stream
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading the request body: {e}"))?;
    }
    IncomingBody::finish(body);
    Ok(bytes)
}

/// Answer `status` with `headers` (fixed, valid names and values) and `body`.
pub fn respond_raw(out: ResponseOutparam, status: u16, headers: &[(&str, &[u8])], body: &[u8]) {
    let fields = Fields::new();
    for (name, value) in headers {
        let _ = fields.append(name, value);
    }
    let _ = fields.append("content-length", body.len().to_string().as_bytes());
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        ResponseOutparam::set(
            out,
            Err(ErrorCode::InternalError(Some("no response body".into()))),
        );
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    let written = match outgoing.write() {
        Ok(mut stream) => stream
            .write_all(body)
            .and_then(|()| std::io::Write::flush(&mut stream))
            .is_ok(),
        Err(()) => false,
    };
    // The stream is dropped before finishing the body, as wasi:http requires.
    if written {
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

/// Answer `status` with `body` (e.g. a `serde_json::Value`) as JSON.
pub fn respond(out: ResponseOutparam, status: u16, body: &impl std::fmt::Display) {
    respond_raw(
        out,
        status,
        &[("content-type", b"application/json")],
        body.to_string().as_bytes(),
    );
}
