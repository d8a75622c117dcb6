//! The baseline of the load test (`bench/proxy.sh`): a bare reverse proxy
//! built from the same parts as Ficus and nothing else. A hyper-util `auto`
//! server (HTTP/1.1 and HTTP/2 cleartext) accepts requests and forwards each
//! one, body streamed, to a single upstream through a shared, pooled
//! hyper-util legacy client (keep-alive, `TCP_NODELAY`), then streams the
//! response back. No routing, plugins, header rewriting or metrics.
//!
//! ```text
//! cargo run --release -p ficus --example bare_proxy -- [--endpoint-client] UPSTREAM_ADDR [LISTEN_ADDR]
//! ```
//!
//! `UPSTREAM_ADDR` is `host:port`; `LISTEN_ADDR` defaults to `127.0.0.1:0`.
//! With `--endpoint-client` (target `bare-lean` of the benches) it forwards
//! through Ficus's own per-endpoint client (`ficus::upstream::client`)
//! instead, buffering the request body as Ficus does: the same proxy with
//! Ficus's upstream client, to tell Ficus's overhead apart from the client's.
//! Prints `listening on http://ADDR` on stdout once it accepts connections,
//! and runs until killed. Like `ficus`, it runs a tokio multi-thread runtime
//! with one worker per CPU the process may run on.

use bytes::Bytes;
use ficus::upstream::client::{origin_form, EndpointClient};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::io::Write;
use std::time::Duration;
use tokio::net::TcpListener;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

fn bad_gateway() -> http::Response<Body> {
    let mut resp = http::Response::new(
        Full::new(Bytes::from_static(b"bad gateway\n"))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
    resp
}

/// Forward `req` through Ficus's per-endpoint client.
async fn forward_lean(
    client: &EndpointClient,
    host: &http::HeaderValue,
    req: http::Request<Incoming>,
) -> http::Response<Body> {
    let (mut parts, body) = req.into_parts();
    let Ok(body) = body.collect().await else {
        return bad_gateway();
    };
    parts.uri = origin_form(&parts.uri);
    parts
        .headers
        .entry(http::header::HOST)
        .or_insert_with(|| host.clone());
    let out = http::Request::from_parts(parts, Full::new(body.to_bytes()));
    match client.send(out).await {
        Ok(resp) => resp.map(|body| body.boxed_unsync()),
        Err(_) => bad_gateway(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let lean = args.next_if(|a| a == "--endpoint-client").is_some();
    let upstream: http::uri::Authority = args
        .next()
        .ok_or("usage: bare_proxy [--endpoint-client] UPSTREAM_ADDR [LISTEN_ADDR]")?
        .parse()?;
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        let lean = lean.then(|| {
            let host = http::HeaderValue::from_str(upstream.as_str()).expect("an authority");
            let client = EndpointClient::new(upstream.as_str().into(), Duration::from_secs(1));
            (client, host)
        });
        let server = auto::Builder::new(TokioExecutor::new());

        let listener = TcpListener::bind(&listen).await?;
        println!("listening on http://{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (client, upstream, server) = (client.clone(), upstream.clone(), server.clone());
            let lean = lean.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                        let (client, upstream) = (client.clone(), upstream.clone());
                        let lean = lean.clone();
                        async move {
                            if let Some((client, host)) = &lean {
                                return Ok(forward_lean(client, host, req).await);
                            }
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.as_str())
                                .unwrap_or("/");
                            let uri = http::Uri::builder()
                                .scheme("http")
                                .authority(upstream)
                                .path_and_query(path)
                                .build();
                            let Ok(uri) = uri else {
                                return Ok::<_, Infallible>(bad_gateway());
                            };
                            *req.uri_mut() = uri;
                            Ok(match client.request(req).await {
                                Ok(resp) => resp.map(|body| body.boxed_unsync()),
                                Err(_) => bad_gateway(),
                            })
                        }
                    });
                let _ = server.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}
