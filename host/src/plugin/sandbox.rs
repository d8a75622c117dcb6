//! The WASI environment a plugin runs in: nothing granted by default.
//!
//! Guests built for `wasm32-wasip2` import parts of WASI (std's panic and
//! I/O machinery; Python and JS runtimes import most of it). Ficus links
//! WASI so such components instantiate, but with no preopened directories,
//! no sockets, no environment, no arguments, and frozen clocks unless the
//! plugin is granted `clock`. Output written to stdout/stderr is captured
//! (the last few KiB) so a panic message can be shown in the error log.

use bytes::{Bytes, BytesMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx};

/// How much guest output is kept.
const CAPTURE_BYTES: usize = 4096;
/// How much a guest may write to stdout/stderr in one `write` (WASI's
/// usual stream permit).
const WRITE_PERMIT: usize = 64 * 1024;

/// Captures the tail of a guest's stdout/stderr.
#[derive(Clone, Default)]
pub struct OutputCapture(Arc<Mutex<BytesMut>>);

impl OutputCapture {
    /// Take the captured text (lossy UTF-8), leaving the buffer empty.
    pub fn take(&self) -> String {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&buf).trim().to_owned();
        buf.clear();
        text
    }

    /// Discard the captured text.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl IsTerminal for OutputCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputCapture {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    /// A stream that appends to the buffer as it is written and is always
    /// ready: no background task (wasmtime-wasi's default adapter spawns
    /// one per stream), and nothing for a synchronous call to wait on.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl OutputCapture {
    fn append(&self, data: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        buf.extend_from_slice(data);
        if buf.len() > CAPTURE_BYTES {
            let excess = buf.len() - CAPTURE_BYTES;
            let _ = buf.split_to(excess);
        }
    }
}

impl OutputStream for OutputCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputCapture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for OutputCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A wall clock stuck at the Unix epoch (for plugins without `clock`).
struct FrozenWall;
impl HostWallClock for FrozenWall {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// A monotonic clock that never advances (for plugins without `clock`).
struct FrozenMonotonic;
impl HostMonotonicClock for FrozenMonotonic {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// The real monotonic clock for plugins granted `clock`, with one origin
/// for the whole process: a request's hooks may run in different pooled
/// instances, so a reading taken in `on-request` must mean the same thing
/// in `on-response`.
struct SharedMonotonic;
impl HostMonotonicClock for SharedMonotonic {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_nanos() as u64
    }
}

/// Build the WASI context for one plugin store.
pub fn wasi_ctx(clock: bool, output: &OutputCapture) -> WasiCtx {
    let mut b = WasiCtx::builder();
    b.stdout(output.clone())
        .stderr(output.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    if clock {
        b.monotonic_clock(SharedMonotonic);
    } else {
        b.wall_clock(FrozenWall).monotonic_clock(FrozenMonotonic);
    }
    b.build()
}
