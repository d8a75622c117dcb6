//! `hello`: the quick start's handler route, a `wasi:http/proxy` component.
//!
//! * `/echo` (any method): 200 with the request body echoed back, with the
//!   request's `content-type` (default `application/octet-stream`);
//! * anything else: 200 `content-type: text/plain`, body `Hello from Ficus!\n`.
//!
//! Every response carries `x-hello-method` and `x-hello-path` (path with
//! query) echoing the request.

#[allow(dead_code)]
#[path = "../../common/http.rs"]
mod http;

use http::read_body;
use wasip2::http::types::{ErrorCode, IncomingRequest, Method, ResponseOutparam};

struct Hello;

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

fn respond(out: ResponseOutparam, headers: &[(&str, &[u8])], body: &[u8]) {
    http::respond_raw(out, 200, headers, body);
}

impl wasip2::exports::http::incoming_handler::Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let method = method_name(&request.method());
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let echo = path == "/echo" || path.starts_with("/echo?");

        let mut headers: Vec<(&str, &[u8])> = vec![
            ("x-hello-method", method.as_bytes()),
            ("x-hello-path", path.as_bytes()),
        ];
        if echo {
            let content_type = request
                .headers()
                .get("content-type")
                .into_iter()
                .next()
                .unwrap_or_else(|| b"application/octet-stream".to_vec());
            match read_body(&request) {
                Ok(body) => {
                    headers.push(("content-type", &content_type));
                    respond(out, &headers, &body);
                }
                Err(message) => {
                    ResponseOutparam::set(out, Err(ErrorCode::InternalError(Some(message))));
                }
            }
        } else {
            headers.push(("content-type", b"text/plain"));
            respond(out, &headers, b"Hello from Ficus!\n");
        }
    }
}

wasip2::http::proxy::export!(Hello);
