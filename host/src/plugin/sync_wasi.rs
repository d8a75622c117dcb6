//! WASI for plugins whose hooks are called synchronously (`calls = "sync"`).
//!
//! A synchronous call skips the async fiber every `call_async` runs on
//! (about 1k instructions and typically 0.2-0.25 us per hook call on the
//! benchmark machine), but wasmtime allows it only when no host function linked into
//! the instance is async. wasmtime-wasi's synchronous bindings are not
//! usable here: their blocking functions (`blocking-write-and-flush`, a
//! stream's destructor, `poll`) enter tokio with `Handle::block_on`, which
//! panics on a tokio worker thread, where every hook runs.
//!
//! This module links what a Rust guest built for `wasm32-wasip2` imports:
//! `wasi:cli`, `wasi:clocks` and `wasi:random` (whose functions never wait)
//! and `wasi:io`, whose blocking functions are implemented here by polling
//! their future once (the streams Ficus gives plugins, captured stdout and
//! stderr and an empty stdin, are always ready) and, only when it is not
//! ready (a plugin waiting on a clock), waiting for it inside
//! [`tokio::task::block_in_place`], which hands the worker's other tasks to
//! another thread while this one waits. `wasi:filesystem` and
//! `wasi:sockets` are not linked: a plugin that imports them cannot use
//! synchronous calls (it fails to load, saying so).

use std::future::Future;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::io::streams::{
    Host as AsyncStreams, HostInputStream as AsyncInput, HostOutputStream as AsyncOutput,
};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, StreamError, StreamResult};
use wasmtime_wasi::WasiView;

/// The WASI packages the asynchronous filter linker provides and this one
/// does not.
pub const ASYNC_ONLY_WASI_PACKAGES: [&str; 2] = ["wasi:filesystem/", "wasi:sockets/"];

/// Run `fut` to completion without a fiber: poll it once, and if it is not
/// ready, wait for it on this thread inside `block_in_place` (multi-thread
/// tokio runtime). On a current-thread runtime a future that is not ready
/// fails instead: there is no other thread to keep the runtime going while
/// this one waits. Outside any runtime it waits on a private one.
pub fn block_sync<F: Future>(fut: F) -> Result<F::Output, wasmtime::Error> {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        // Not on a runtime (Ficus always calls plugins on one; this keeps
        // the function total): wait on a private runtime.
        static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        let rt = RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for synchronous WASI calls")
        });
        return Ok(rt.block_on(fut));
    };
    let mut fut = pin!(fut);
    if let Poll::Ready(out) = fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return Ok(out);
    }
    match handle.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => {
            Ok(tokio::task::block_in_place(|| handle.block_on(fut)))
        }
        _ => Err(wasmtime::format_err!(
            "a plugin with calls = \"sync\" waited on I/O or a clock, which needs a \
             multi-thread runtime"
        )),
    }
}

/// Like [`block_sync`], for the stream functions, whose errors are
/// [`StreamError`]s.
fn block_stream<T, F: Future<Output = StreamResult<T>>>(fut: F) -> StreamResult<T> {
    block_sync(fut).map_err(StreamError::Trap)?
}

/// The resource table, seen through the synchronous `wasi:io` traits.
pub struct SyncIoTable<'a>(&'a mut ResourceTable);

/// [`HasData`] for [`SyncIoTable`].
struct SyncIo;

impl HasData for SyncIo {
    type Data<'a> = SyncIoTable<'a>;
}

impl streams::Host for SyncIoTable<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        Ok(match AsyncStreams::convert_stream_error(self.0, err)? {
            wasmtime_wasi::p2::bindings::io::streams::StreamError::LastOperationFailed(e) => {
                streams::StreamError::LastOperationFailed(e)
            }
            wasmtime_wasi::p2::bindings::io::streams::StreamError::Closed => {
                streams::StreamError::Closed
            }
        })
    }
}

impl streams::HostOutputStream for SyncIoTable<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        block_sync(AsyncOutput::drop(self.0, stream))?
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        AsyncOutput::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        AsyncOutput::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        block_stream(AsyncOutput::blocking_write_and_flush(self.0, stream, bytes))
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        block_stream(AsyncOutput::blocking_write_zeroes_and_flush(
            self.0, stream, len,
        ))
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncOutput::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        AsyncOutput::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        AsyncOutput::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        block_stream(AsyncOutput::blocking_flush(self.0, stream))
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        AsyncOutput::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        block_stream(AsyncOutput::blocking_splice(self.0, dst, src, len))
    }
}

impl streams::HostInputStream for SyncIoTable<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        block_sync(AsyncInput::drop(self.0, stream))?
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        AsyncInput::read(self.0, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        block_stream(AsyncInput::blocking_read(self.0, stream, len))
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        AsyncInput::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        block_stream(AsyncInput::blocking_skip(self.0, stream, len))
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncInput::subscribe(self.0, stream)
    }
}

impl poll::Host for SyncIoTable<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        block_sync(async_poll::Host::poll(self.0, pollables))?
    }
}

impl poll::HostPollable for SyncIoTable<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        block_sync(async_poll::HostPollable::ready(self.0, pollable))?
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        block_sync(async_poll::HostPollable::block(self.0, pollable))?
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        async_poll::HostPollable::drop(self.0, pollable)
    }
}

/// Add the WASI a synchronous plugin may import to `linker`: `wasi:cli`,
/// `wasi:clocks`, `wasi:random` and `wasi:io`, with no async host function.
pub fn add_to_linker<T: WasiView>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, random};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};

    let l = linker;
    fn table<T: WasiView>(t: &mut T) -> SyncIoTable<'_> {
        SyncIoTable(t.ctx().table)
    }
    wasmtime_wasi::p2::bindings::io::error::add_to_linker::<T, HasTable>(l, |t| t.ctx().table)?;
    poll::add_to_linker::<T, SyncIo>(l, table)?;
    streams::add_to_linker::<T, SyncIo>(l, table)?;
    clocks::wall_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    clocks::monotonic_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    random::random::add_to_linker::<T, WasiRandom>(l, T::random)?;
    random::insecure::add_to_linker::<T, WasiRandom>(l, T::random)?;
    random::insecure_seed::add_to_linker::<T, WasiRandom>(l, T::random)?;
    cli::exit::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::environment::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_input::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_output::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    Ok(())
}

/// [`HasData`] for the plain resource table (`wasi:io/error`).
struct HasTable;

impl HasData for HasTable {
    type Data<'a> = &'a mut ResourceTable;
}

#[cfg(test)]
mod tests {
    use super::block_sync;
    use std::time::Duration;

    #[test]
    fn a_ready_future_completes_without_a_runtime() {
        assert_eq!(block_sync(async { 7 }).unwrap(), 7);
    }

    #[test]
    fn a_pending_future_completes_without_a_runtime() {
        let out = block_sync(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            8
        });
        assert_eq!(out.unwrap(), 8);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pending_future_completes_on_a_worker_thread() {
        let out = block_sync(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            9
        });
        assert_eq!(out.unwrap(), 9);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_pending_future_fails_on_a_current_thread_runtime() {
        let err = block_sync(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
        })
        .unwrap_err();
        assert!(err.to_string().contains("multi-thread runtime"), "{err}");
    }
}
