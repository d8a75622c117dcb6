//! A tiny HTTP/1.1 upstream for the load test (`bench/proxy.sh`): answers
//! every request with `200` and the 2-byte body `ok`, keeping connections
//! alive.
//!
//! ```text
//! cargo run --release -p ficus --example bench_upstream -- [LISTEN_ADDR]
//! ```
//!
//! `LISTEN_ADDR` defaults to `127.0.0.1:0` (a free port). Prints
//! `listening on http://ADDR` on stdout once it accepts connections, and
//! runs until killed. The runtime has one worker per CPU the process may
//! run on (so `taskset -c 1` gives it one).

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io::Write;
use tokio::net::TcpListener;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&addr).await?;
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
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
