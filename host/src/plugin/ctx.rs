//! The data each plugin store carries, and the host side of the WIT
//! interfaces (`types`, `log`, `metrics`, `state`) implemented on it.

use super::bindings::ficus::gateway::{leader, log, metrics, pubsub, state, types};
use super::bindings::HeaderError;
use super::sandbox::{wasi_ctx, OutputCapture};
use super::{Grants, Hook, PluginError};
use crate::capability;
use crate::capability::leader::LeaderView;
use crate::capability::pubsub::{PubSubError, Publisher};
use crate::capability::state::{StateBackend, StateError};
use crate::pipeline::exchange::{plugin_may_edit, RequestState, ResponseState};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::ResourceLimiter;
use wasmtime::{Engine, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

/// Marker for the `request` resource; the data is [`PluginCtx::req`].
pub struct RequestHandle;
/// Marker for the `response` resource; the data is [`PluginCtx::resp`].
pub struct ResponseHandle;

/// What a plugin instance may use, shared by all its instances on a route.
pub struct Capabilities {
    /// Plugin name (for logs, metrics and the state namespace).
    pub plugin: Arc<str>,
    /// Route name.
    pub route: Arc<str>,
    /// The state backend.
    pub state: Arc<dyn StateBackend>,
    /// The pub/sub backend.
    pub pubsub: Arc<dyn Publisher>,
    /// This node's view of its leader elections.
    pub leader: Arc<dyn LeaderView>,
    /// The event store (present when some plugin is granted `events`).
    pub events: Option<Arc<dyn crate::capability::events::EventStore>>,
    /// The read models (present when projections are configured).
    pub read_models: Option<Arc<crate::capability::readmodel::ReadModelService>>,
}

impl Capabilities {
    /// The capabilities of `plugin` on `route`, from the process's services.
    pub fn new(plugin: &str, route: &str, services: &crate::capability::Services) -> Self {
        Capabilities {
            plugin: plugin.into(),
            route: route.into(),
            state: services.state.clone(),
            pubsub: services.pubsub.clone(),
            leader: services.leader.clone(),
            events: services.events.clone(),
            read_models: services.read_models.clone(),
        }
    }
}

/// Enforces the per-instance memory limit and remembers when it was hit.
pub struct MemoryLimiter {
    /// Maximum linear memory per instance, in bytes.
    pub limit: usize,
    /// Set when a growth past the limit was refused.
    pub exceeded: bool,
    /// The largest size any memory of the instance has grown to, in bytes
    /// (wasm memories never shrink, so this is also the current size of the
    /// largest one).
    pub peak: usize,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Err(wasmtime::format_err!(
                "memory limit exceeded: {desired} bytes requested, limit {} bytes",
                self.limit
            ));
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// Store data of a filter plugin instance.
pub struct PluginCtx {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) output: OutputCapture,
    pub(crate) caps: Arc<Capabilities>,
    /// The request lent for the current hook call.
    pub(crate) req: Option<Box<RequestState>>,
    /// The response lent for the current `on-response` call.
    pub(crate) resp: Option<Box<ResponseState>>,
    /// Pipeline position of this filter (namespaces request context).
    pub(crate) position: u16,
    /// The current call's deadline: `None` from [`arm`] until the first
    /// epoch tick of the call, which sets it to that tick plus
    /// `call_timeout` (see [`store_for`]).
    pub(crate) call_deadline: Option<Instant>,
    pub(crate) call_timeout: Duration,
    /// Calls into this instance are synchronous (`calls = "sync"`): at an
    /// epoch tick before the deadline, the call continues on its thread
    /// instead of yielding (a synchronous call has no fiber to yield from).
    pub(crate) sync_calls: bool,
    pub(crate) http: WasiHttpCtx,
    pub(crate) http_hooks: DenyOutbound,
    /// A projection's model and uncommitted writes (projections only).
    pub(crate) projection: Option<Box<ProjectionScope>>,
    /// The leadership a tick call runs under: its appends are fenced with
    /// it (ticks only).
    pub(crate) fence: Option<crate::capability::events::fence::Fence>,
}

/// What a projection instance writes to: its model, the generation being
/// written, and the writes not committed yet (the current batch's, then the
/// current event's, which are dropped if its `on-event` fails).
pub struct ProjectionScope {
    /// The model (the projection's name).
    pub model: Arc<str>,
    /// The generation written.
    pub generation: u64,
    /// Writes of the events of this batch that succeeded.
    pub batch: std::collections::BTreeMap<String, Option<Vec<u8>>>,
    /// Writes of the event being applied.
    pub event: std::collections::BTreeMap<String, Option<Vec<u8>>>,
}

impl ProjectionScope {
    /// The uncommitted value of `key`: `None` if untouched, `Some(None)` if
    /// deleted.
    pub fn pending(&self, key: &str) -> Option<Option<&[u8]>> {
        self.event
            .get(key)
            .or_else(|| self.batch.get(key))
            .map(|v| v.as_deref())
    }
}

/// `wasi:http` hooks that refuse outgoing requests: plugins have no network
/// access unless a future grant provides it.
pub struct DenyOutbound;

impl WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        Box::new(async { Err(HttpError::HttpRequestDenied) })
    }
}

impl WasiHttpView for PluginCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

/// Create a store for one plugin instance: sandboxed WASI, memory limiter,
/// and an epoch callback that yields while a call runs and interrupts it at
/// its deadline.
pub fn new_store(
    engine: &Engine,
    caps: Arc<Capabilities>,
    grants: Grants,
    memory_limit: usize,
    timeout: Duration,
    position: u16,
) -> Store<PluginCtx> {
    let output = OutputCapture::default();
    let ctx = PluginCtx {
        wasi: wasi_ctx(grants.clock, &output),
        table: ResourceTable::new(),
        limiter: MemoryLimiter {
            limit: memory_limit,
            exceeded: false,
            peak: 0,
        },
        output,
        caps,
        req: None,
        resp: None,
        position,
        call_deadline: None,
        call_timeout: timeout,
        sync_calls: false,
        http: WasiHttpCtx::new(),
        http_hooks: DenyOutbound,
        projection: None,
        fence: None,
    };
    store_for(engine, ctx)
}

/// A store around `ctx`, with the memory limiter and the deadline callback.
///
/// The callback runs at each epoch tick ([`EPOCH_TICK`](super::engine::EPOCH_TICK))
/// during a call. The first tick of a call starts its deadline clock:
/// the call is interrupted at the first tick at least `call_timeout` after
/// it. A call therefore always gets its whole timeout, and at most about two
/// ticks more; in exchange, arming a call ([`arm`]) reads no clock, which
/// matters on the warm path, where most calls end before any tick.
pub fn store_for(engine: &Engine, ctx: PluginCtx) -> Store<PluginCtx> {
    let mut store = Store::new(engine, ctx);
    store.limiter(|c| &mut c.limiter);
    store.epoch_deadline_callback(|mut ctx| {
        let d = ctx.data_mut();
        let timeout = d.call_timeout;
        if deadline_passed(&mut d.call_deadline, timeout) {
            Ok(UpdateDeadline::Interrupt)
        } else if d.sync_calls {
            Ok(UpdateDeadline::Continue(1))
        } else {
            // Let other tasks run while a long call continues.
            Ok(UpdateDeadline::Yield(1))
        }
    });
    store
}

/// At an epoch tick during a call: whether the call's deadline has passed.
/// The call's first tick (`deadline` is `None`, as [`arm`] leaves it)
/// starts the clock: the deadline becomes that tick plus `timeout`.
pub fn deadline_passed(deadline: &mut Option<Instant>, timeout: Duration) -> bool {
    let now = Instant::now();
    match *deadline {
        Some(d) => now >= d,
        None => {
            *deadline = Some(now + timeout);
            false
        }
    }
}

/// Take the data back from a store being dropped, to build the next
/// instance of the same pipeline step on it ([`store_for`]).
///
/// Building the WASI context (seeding its random number generators, boxing
/// its streams and clocks) is most of what [`new_store`] costs beyond a bare
/// `Store::new`; nothing of it depends on the instance, and the guest
/// cannot change it. Everything an instance can leave behind is reset: the
/// resource table (streams and other guest-created resources) is replaced,
/// captured output is discarded, the memory accounting starts again, and
/// lent request/response, projection scope and fence are cleared.
pub fn recycle(store: Store<PluginCtx>) -> PluginCtx {
    let mut ctx = store.into_data();
    ctx.table = ResourceTable::new();
    ctx.output.clear();
    ctx.limiter.exceeded = false;
    ctx.limiter.peak = 0;
    ctx.req = None;
    ctx.resp = None;
    ctx.http = WasiHttpCtx::new();
    ctx.projection = None;
    ctx.fence = None;
    ctx
}

/// Arm the deadline for a call; its clock starts at the call's first epoch
/// tick ([`store_for`]).
pub fn arm(store: &mut Store<PluginCtx>) {
    store.data_mut().call_deadline = None;
    store.set_epoch_deadline(1);
}

/// Turn a failed instantiation into a [`PluginError`]: the pooling
/// allocator being full is [`PluginError::Capacity`]; anything else (a trap
/// in a start function, the memory limit) is classified as in `configure`.
pub fn instantiation_error(store: &mut Store<PluginCtx>, e: wasmtime::Error) -> PluginError {
    let msg = format!("{e:#}");
    if msg.contains("maximum concurrent") || msg.contains("limit of") {
        PluginError::Capacity(msg)
    } else {
        classify(store, Hook::Configure, e)
    }
}

/// Turn a wasmtime error from a call into a [`PluginError`].
pub fn classify(store: &mut Store<PluginCtx>, hook: Hook, e: wasmtime::Error) -> PluginError {
    let data = store.data_mut();
    let output = data.output.take();
    if data.limiter.exceeded {
        return PluginError::MemoryLimit {
            hook: hook.as_str(),
            detail: format!("limit {} bytes", data.limiter.limit),
        };
    }
    if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
        return PluginError::Timeout {
            hook: hook.as_str(),
            timeout_ms: data.call_timeout.as_millis() as u64,
        };
    }
    let message = match e.downcast_ref::<Trap>() {
        Some(t) => t.to_string(),
        None => format!("{e:#}"),
    };
    PluginError::Trap {
        hook: hook.as_str(),
        message,
        output,
    }
}

impl WasiView for PluginCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

fn outside_call() -> wasmtime::Error {
    wasmtime::format_err!("request/response handle used outside of its hook call")
}

impl PluginCtx {
    fn req(&mut self) -> wasmtime::Result<&mut RequestState> {
        self.req.as_deref_mut().ok_or_else(outside_call)
    }
    fn resp(&mut self) -> wasmtime::Result<&mut ResponseState> {
        self.resp.as_deref_mut().ok_or_else(outside_call)
    }
    fn state_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.caps.plugin.len() + 1 + key.len());
        k.push_str(&self.caps.plugin);
        k.push('\u{0}');
        k.push_str(key);
        k
    }
}

fn header_one(h: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    h.get(name).map(|v| v.as_bytes().to_vec())
}
fn header_all(h: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    h.get_all(name)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}
fn header_list(h: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    h.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}
/// Set or append a header for a plugin. The value lifted from the guest
/// becomes the header value's storage (no second copy).
fn header_edit(
    h: &mut HeaderMap,
    name: &str,
    value: Vec<u8>,
    append: bool,
) -> Result<(), HeaderError> {
    let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| HeaderError::InvalidName)?;
    if !plugin_may_edit(&n) {
        return Err(HeaderError::Forbidden);
    }
    let v = HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .map_err(|_| HeaderError::InvalidValue)?;
    if append {
        h.append(n, v);
    } else {
        h.insert(n, v);
    }
    Ok(())
}
fn header_remove(h: &mut HeaderMap, name: &str) -> bool {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(n) if plugin_may_edit(&n) => h.remove(n).is_some(),
        _ => false,
    }
}

impl types::Host for PluginCtx {}

impl types::HostRequest for PluginCtx {
    fn method(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.req()?.method.as_str().to_owned())
    }
    fn scheme(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.req()?.scheme.to_owned())
    }
    fn authority(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.req()?.authority())
    }
    fn path_with_query(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.req()?.path_and_query().to_owned())
    }
    fn set_path_with_query(
        &mut self,
        _: Resource<RequestHandle>,
        value: String,
    ) -> wasmtime::Result<Result<(), String>> {
        let req = self.req()?;
        if !value.starts_with('/') {
            return Ok(Err(format!("path must start with '/': {value:?}")));
        }
        let pq = match http::uri::PathAndQuery::try_from(value.as_str()) {
            Ok(pq) => pq,
            Err(e) => return Ok(Err(format!("invalid path {value:?}: {e}"))),
        };
        let mut parts = std::mem::take(&mut req.uri).into_parts();
        parts.path_and_query = Some(pq);
        req.uri = http::Uri::from_parts(parts).unwrap_or_default();
        Ok(Ok(()))
    }
    fn client_addr(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.req()?.client_addr.to_string())
    }
    fn route(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<String> {
        Ok(self.req()?.route.to_string())
    }
    fn header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(header_one(&self.req()?.headers, &name))
    }
    fn header_all(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
    ) -> wasmtime::Result<Vec<Vec<u8>>> {
        Ok(header_all(&self.req()?.headers, &name))
    }
    fn headers(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        Ok(header_list(&self.req()?.headers))
    }
    fn set_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), HeaderError>> {
        Ok(header_edit(&mut self.req()?.headers, &name, value, false))
    }
    fn append_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), HeaderError>> {
        Ok(header_edit(&mut self.req()?.headers, &name, value, true))
    }
    fn remove_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
    ) -> wasmtime::Result<bool> {
        Ok(header_remove(&mut self.req()?.headers, &name))
    }
    fn body(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<Option<Vec<u8>>> {
        let req = self.req()?;
        Ok(req.body_exposed.then(|| req.body.to_vec()))
    }
    fn set_body(
        &mut self,
        _: Resource<RequestHandle>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        let req = self.req()?;
        if !req.body_exposed {
            return Ok(Err(
                "the route does not expose bodies to plugins (plugin_body = false)".into(),
            ));
        }
        req.body = Bytes::from(body);
        Ok(Ok(()))
    }
    fn set_attempt_timeout(&mut self, _: Resource<RequestHandle>, ms: u32) -> wasmtime::Result<()> {
        self.req()?.attempt_timeout = Some(Duration::from_millis(u64::from(ms.max(1))));
        Ok(())
    }
    fn max_attempts(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<u32> {
        Ok(self.req()?.max_attempts)
    }
    fn context(
        &mut self,
        _: Resource<RequestHandle>,
        key: String,
    ) -> wasmtime::Result<Option<String>> {
        let pos = self.position;
        Ok(self.req()?.context(pos, &key).map(str::to_owned))
    }
    fn set_context(
        &mut self,
        _: Resource<RequestHandle>,
        key: String,
        value: String,
    ) -> wasmtime::Result<()> {
        let pos = self.position;
        let req = self.req()?;
        if req.context.len() >= 256 || key.len() + value.len() > 16 * 1024 {
            return Err(wasmtime::format_err!(
                "request context limit exceeded (256 entries, 16 KiB each)"
            ));
        }
        req.set_context(pos, key, value);
        Ok(())
    }
    fn mirror(
        &mut self,
        _: Resource<RequestHandle>,
        target: types::UpstreamTarget,
        compare: types::MirrorCompare,
    ) -> wasmtime::Result<Result<(), String>> {
        let req = self.req()?;
        if target.cluster.is_empty() {
            return Ok(Err("mirror target cluster must not be empty".into()));
        }
        if let Some(bad) = compare
            .headers
            .iter()
            .find(|h| HeaderName::from_bytes(h.as_bytes()).is_err())
        {
            return Ok(Err(format!(
                "invalid header name {bad:?} in mirror compare"
            )));
        }
        req.mirror = Some(Box::new(crate::pipeline::shadow::Mirror {
            target,
            compare,
        }));
        Ok(Ok(()))
    }
    fn drop(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl types::HostResponse for PluginCtx {
    fn status(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<u16> {
        Ok(self.resp()?.status.as_u16())
    }
    fn set_status(
        &mut self,
        _: Resource<ResponseHandle>,
        status: u16,
    ) -> wasmtime::Result<Result<(), String>> {
        let resp = self.resp()?;
        match StatusCode::from_u16(status) {
            Ok(s) if (100..=599).contains(&status) => {
                resp.status = s;
                Ok(Ok(()))
            }
            _ => Ok(Err(format!(
                "invalid status code {status} (expected 100..=599)"
            ))),
        }
    }
    fn header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
    ) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(header_one(&self.resp()?.headers, &name))
    }
    fn header_all(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
    ) -> wasmtime::Result<Vec<Vec<u8>>> {
        Ok(header_all(&self.resp()?.headers, &name))
    }
    fn headers(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        Ok(header_list(&self.resp()?.headers))
    }
    fn set_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), HeaderError>> {
        Ok(header_edit(&mut self.resp()?.headers, &name, value, false))
    }
    fn append_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), HeaderError>> {
        Ok(header_edit(&mut self.resp()?.headers, &name, value, true))
    }
    fn remove_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
    ) -> wasmtime::Result<bool> {
        Ok(header_remove(&mut self.resp()?.headers, &name))
    }
    fn body(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<Option<Vec<u8>>> {
        let resp = self.resp()?;
        Ok(if resp.body_exposed {
            resp.body.as_ref().map(|b| b.to_vec())
        } else {
            None
        })
    }
    fn set_body(
        &mut self,
        _: Resource<ResponseHandle>,
        body: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        let resp = self.resp()?;
        if !resp.body_exposed {
            return Ok(Err(
                "the route does not expose bodies to plugins (plugin_body = false)".into(),
            ));
        }
        resp.body = Some(Bytes::from(body));
        Ok(Ok(()))
    }
    fn drop(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl log::Host for PluginCtx {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        capability::log::emit(&self.caps.plugin, &self.caps.route, level, &message);
        Ok(())
    }
    fn enabled(&mut self, level: log::Level) -> wasmtime::Result<bool> {
        Ok(capability::log::enabled(level))
    }
}

impl metrics::Host for PluginCtx {
    fn counter_add(
        &mut self,
        name: String,
        value: u64,
        labels: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(
            capability::metrics::plugin_labels(&name, labels, &self.caps.plugin, &self.caps.route)
                .map(|l| ::metrics::counter!(name, l).increment(value))
                .map_err(|e| e.to_string()),
        )
    }
    fn gauge_set(
        &mut self,
        name: String,
        value: f64,
        labels: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(
            capability::metrics::plugin_labels(&name, labels, &self.caps.plugin, &self.caps.route)
                .map(|l| ::metrics::gauge!(name, l).set(value))
                .map_err(|e| e.to_string()),
        )
    }
    fn histogram_observe(
        &mut self,
        name: String,
        value: f64,
        labels: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(
            capability::metrics::plugin_labels(&name, labels, &self.caps.plugin, &self.caps.route)
                .map(|l| ::metrics::histogram!(name, l).record(value))
                .map_err(|e| e.to_string()),
        )
    }
}

fn to_wit(e: StateError) -> state::Error {
    match e {
        StateError::Unavailable(m) => state::Error::Unavailable(m),
        StateError::Invalid(m) => state::Error::Invalid(m),
        StateError::TooLarge => state::Error::TooLarge,
    }
}

fn ttl(ms: Option<u64>) -> Option<Duration> {
    ms.map(Duration::from_millis)
}

impl state::Host for PluginCtx {
    async fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<state::Entry>, state::Error>> {
        let key = self.state_key(&key);
        Ok(self
            .caps
            .state
            .get(&key)
            .await
            .map(|o| {
                o.map(|e| state::Entry {
                    value: e.value,
                    revision: e.revision,
                })
            })
            .map_err(to_wit))
    }
    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<u64, state::Error>> {
        let key = self.state_key(&key);
        Ok(self
            .caps
            .state
            .set(&key, value, ttl(ttl_ms))
            .await
            .map_err(to_wit))
    }
    async fn compare_and_set(
        &mut self,
        key: String,
        expected: Option<u64>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<Option<u64>, state::Error>> {
        let key = self.state_key(&key);
        Ok(self
            .caps
            .state
            .compare_and_set(&key, expected, value, ttl(ttl_ms))
            .await
            .map_err(to_wit))
    }
    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<i64, state::Error>> {
        let key = self.state_key(&key);
        Ok(self
            .caps
            .state
            .increment(&key, delta, ttl(ttl_ms))
            .await
            .map_err(to_wit))
    }
    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, state::Error>> {
        let key = self.state_key(&key);
        Ok(self.caps.state.delete(&key).await.map_err(to_wit))
    }
}

impl pubsub::Host for PluginCtx {
    async fn publish(
        &mut self,
        subject: String,
        payload: Vec<u8>,
        headers: Vec<(String, String)>,
    ) -> wasmtime::Result<Result<(), pubsub::Error>> {
        Ok(self
            .caps
            .pubsub
            .publish(&subject, payload, headers)
            .await
            .map_err(|e| match e {
                PubSubError::Unavailable(m) => pubsub::Error::Unavailable(m),
                PubSubError::Invalid(m) => pubsub::Error::Invalid(m),
                PubSubError::TooLarge => pubsub::Error::TooLarge,
            }))
    }
}

impl leader::Host for PluginCtx {
    fn status(&mut self, group: String) -> wasmtime::Result<Option<leader::Leadership>> {
        Ok(self.caps.leader.status(&group).map(|l| leader::Leadership {
            leader_id: l.leader_id,
            term: l.term,
            is_self: l.is_self,
            lease_expires_ms: l.lease_expires_ms,
        }))
    }
}

mod events_host {
    use super::PluginCtx;
    use crate::capability::events::{
        Direction, EventStore, EventsError, Expected, NewEvent, RecordedEvent,
    };
    use crate::plugin::bindings::handler_world::ficus::gateway::events as wit;
    use std::sync::Arc;

    fn to_wit(e: EventsError) -> wit::Error {
        match e {
            EventsError::WrongExpectedVersion { actual, .. } => {
                wit::Error::WrongExpectedVersion(actual)
            }
            EventsError::StreamDeleted(_) => wit::Error::StreamDeleted,
            EventsError::TooLarge(m) => wit::Error::TooLarge(m),
            EventsError::Invalid(m) => wit::Error::Invalid(m),
            EventsError::Unavailable(m) => wit::Error::Unavailable(m),
            fenced @ EventsError::Fenced { .. } => wit::Error::Invalid(fenced.to_string()),
        }
    }

    fn recorded(e: RecordedEvent) -> wit::RecordedEvent {
        wit::RecordedEvent {
            stream_id: e.stream,
            version: e.version,
            position: e.position,
            id: e.id,
            event_type: e.event_type,
            data: e.data,
            metadata: e.metadata,
            recorded_ms: e.recorded_ms,
        }
    }

    impl PluginCtx {
        fn event_store(&self) -> Result<Arc<dyn EventStore>, wit::Error> {
            self.caps
                .events
                .clone()
                .ok_or_else(|| wit::Error::Unavailable("this gateway has no event store".into()))
        }
    }

    impl wit::Host for PluginCtx {
        async fn append(
            &mut self,
            stream_id: String,
            expected: wit::ExpectedVersion,
            events: Vec<wit::EventData>,
        ) -> wasmtime::Result<Result<wit::Appended, wit::Error>> {
            let store = match self.event_store() {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
            let expected = match expected {
                wit::ExpectedVersion::Any => Expected::Any,
                wit::ExpectedVersion::NoStream => Expected::NoStream,
                wit::ExpectedVersion::Exists => Expected::Exists,
                wit::ExpectedVersion::Exact(v) => Expected::Exact(v),
            };
            let events = events
                .into_iter()
                .map(|e| NewEvent {
                    id: e.id,
                    event_type: e.event_type,
                    data: e.data,
                    metadata: e.metadata,
                })
                .collect();
            if let Some(fence) = &self.fence {
                let checked = match self.caps.leader.leases() {
                    Some(leases) => crate::capability::events::fence::check(&*leases, fence).await,
                    None => Err(EventsError::Unavailable(
                        "no lease backend to check the fencing token against".into(),
                    )),
                };
                if let Err(e) = checked {
                    return Ok(Err(to_wit(e)));
                }
            }
            Ok(store
                .append(&stream_id, expected, events)
                .await
                .map(|a| wit::Appended {
                    version: a.version,
                    position: a.position,
                })
                .map_err(to_wit))
        }

        async fn read_stream(
            &mut self,
            stream_id: String,
            from_version: u64,
            max: u32,
            direction: wit::Direction,
        ) -> wasmtime::Result<Result<Vec<wit::RecordedEvent>, wit::Error>> {
            let store = match self.event_store() {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
            let direction = match direction {
                wit::Direction::Forward => Direction::Forward,
                wit::Direction::Backward => Direction::Backward,
            };
            Ok(store
                .read_stream(&stream_id, from_version, max.min(1000) as usize, direction)
                .await
                .map(|v| v.into_iter().map(recorded).collect())
                .map_err(to_wit))
        }

        async fn read_all(
            &mut self,
            from_position: u64,
            max: u32,
        ) -> wasmtime::Result<Result<Vec<wit::RecordedEvent>, wit::Error>> {
            let store = match self.event_store() {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
            Ok(store
                .read_all(from_position, max.min(1000) as usize, &Default::default())
                .await
                .map(|p| p.events.into_iter().map(recorded).collect())
                .map_err(to_wit))
        }

        async fn stream_version(
            &mut self,
            stream_id: String,
        ) -> wasmtime::Result<Result<u64, wit::Error>> {
            let store = match self.event_store() {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
            Ok(store.stream_version(&stream_id).await.map_err(to_wit))
        }
    }
}

mod read_model_host {
    use super::PluginCtx;
    use crate::capability::readmodel::{
        check_key, check_value, Document, ReadModelError, ReadModelService, MAX_SCAN,
    };
    use crate::plugin::bindings::handler_world::ficus::gateway::read_model as wit;
    use crate::plugin::bindings::projection_world::ficus::gateway::read_model_write as wit_write;
    use std::sync::Arc;

    fn to_wit(e: ReadModelError) -> wit::Error {
        match e {
            ReadModelError::Invalid(m) => wit::Error::Invalid(m),
            ReadModelError::Stale(m) | ReadModelError::Unavailable(m) => wit::Error::Unavailable(m),
        }
    }

    impl PluginCtx {
        fn read_models(&self) -> Result<Arc<ReadModelService>, wit::Error> {
            self.caps
                .read_models
                .clone()
                .ok_or_else(|| wit::Error::Unavailable("this gateway has no read models".into()))
        }
    }

    impl wit::Host for PluginCtx {
        async fn get(
            &mut self,
            model: String,
            key: String,
        ) -> wasmtime::Result<Result<Option<Vec<u8>>, wit::Error>> {
            let service = match self.read_models() {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
            // A projection reads its own model as it writes it.
            if let Some(scope) = self.projection.as_deref() {
                if *scope.model == *model {
                    if let Err(e) = check_key(&key) {
                        return Ok(Err(to_wit(e)));
                    }
                    if let Some(pending) = scope.pending(&key) {
                        return Ok(Ok(pending.map(<[u8]>::to_vec)));
                    }
                    let generation = scope.generation;
                    return Ok(service
                        .store
                        .get(&model, generation, &key)
                        .await
                        .map_err(to_wit));
                }
            }
            Ok(service.get(&model, &key).await.map_err(to_wit))
        }

        async fn scan(
            &mut self,
            model: String,
            prefix: String,
            start_after: Option<String>,
            max: u32,
        ) -> wasmtime::Result<Result<Vec<wit::Document>, wit::Error>> {
            let service = match self.read_models() {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
            let max = (max as usize).min(MAX_SCAN);
            let docs = match self.projection.as_deref() {
                Some(scope) if *scope.model == *model => {
                    // Stored documents, overlaid with the pending writes.
                    let pending = scope.event.len() + scope.batch.len();
                    let stored = match service
                        .store
                        .scan(
                            &model,
                            scope.generation,
                            &prefix,
                            start_after.as_deref(),
                            max + pending,
                        )
                        .await
                    {
                        Ok(d) => d,
                        Err(e) => return Ok(Err(to_wit(e))),
                    };
                    let mut merged: std::collections::BTreeMap<String, Option<Vec<u8>>> =
                        stored.into_iter().map(|d| (d.key, Some(d.value))).collect();
                    for (k, v) in scope.batch.iter().chain(scope.event.iter()) {
                        let after = start_after.as_deref().is_none_or(|a| k.as_str() > a);
                        if k.starts_with(&prefix) && after {
                            merged.insert(k.clone(), v.clone());
                        }
                    }
                    Ok(merged
                        .into_iter()
                        .filter_map(|(key, value)| value.map(|value| Document { key, value }))
                        .take(max)
                        .collect())
                }
                _ => {
                    service
                        .scan(&model, &prefix, start_after.as_deref(), max)
                        .await
                }
            };
            Ok(docs
                .map(|d| {
                    d.into_iter()
                        .map(|d| wit::Document {
                            key: d.key,
                            value: d.value,
                        })
                        .collect()
                })
                .map_err(to_wit))
        }
    }

    impl wit_write::Host for PluginCtx {
        async fn put(
            &mut self,
            key: String,
            value: Vec<u8>,
        ) -> wasmtime::Result<Result<(), wit::Error>> {
            let Some(scope) = self.projection.as_deref_mut() else {
                return Ok(Err(not_a_projection()));
            };
            if let Err(e) = check_key(&key).and_then(|()| check_value(&key, &value)) {
                return Ok(Err(to_wit(e)));
            }
            scope.event.insert(key, Some(value));
            Ok(Ok(()))
        }

        async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, wit::Error>> {
            let Some(scope) = self.projection.as_deref() else {
                return Ok(Err(not_a_projection()));
            };
            if let Err(e) = check_key(&key) {
                return Ok(Err(to_wit(e)));
            }
            let existed = match scope.pending(&key) {
                Some(v) => v.is_some(),
                None => {
                    let service = match self.read_models() {
                        Ok(s) => s,
                        Err(e) => return Ok(Err(e)),
                    };
                    let (model, generation) = (scope.model.clone(), scope.generation);
                    match service.store.get(&model, generation, &key).await {
                        Ok(v) => v.is_some(),
                        Err(e) => return Ok(Err(to_wit(e))),
                    }
                }
            };
            if let Some(scope) = self.projection.as_deref_mut() {
                scope.event.insert(key, None);
            }
            Ok(Ok(existed))
        }
    }

    fn not_a_projection() -> wit::Error {
        wit::Error::Invalid("only a projection's on-event can write its read model".into())
    }
}

#[cfg(test)]
mod tests {
    use super::{new_store, recycle, store_for, Capabilities};
    use crate::pipeline::exchange::RequestState;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_recycled_store_keeps_nothing_an_instance_left_behind() {
        let engine = wasmtime::Engine::default();
        let caps = Arc::new(Capabilities::new(
            "p",
            "r",
            &crate::app::services_in_process(),
        ));
        let grants = crate::plugin::Grants::default();
        let mut store = new_store(&engine, caps, grants, 1 << 20, Duration::from_millis(50), 3);
        let data = store.data_mut();
        data.limiter.exceeded = true;
        data.limiter.peak = 900_000;
        data.req = Some(Box::new(RequestState {
            method: http::Method::GET,
            uri: http::Uri::from_static("/"),
            headers: http::HeaderMap::new(),
            scheme: "http",
            client_addr: ([127, 0, 0, 1], 1).into(),
            client_ip: http::HeaderValue::from_static("127.0.0.1"),
            route: "r".into(),
            body: bytes::Bytes::new(),
            body_exposed: false,
            attempt_timeout: None,
            max_attempts: 1,
            context: Vec::new(),
            mirror: None,
        }));
        data.table.push(7u32).expect("a resource");
        data.output
            .clone()
            .write_all(b"left over")
            .await
            .expect("write");

        let ctx = recycle(store);
        assert!(
            !ctx.limiter.exceeded,
            "a memory failure is not carried over"
        );
        assert_eq!(ctx.limiter.peak, 0);
        assert_eq!(ctx.limiter.limit, 1 << 20, "the limit stays");
        assert!(ctx.req.is_none() && ctx.resp.is_none());
        assert!(ctx.table.is_empty(), "guest-created resources are gone");
        assert_eq!(ctx.output.take(), "", "captured output is discarded");
        assert_eq!(
            (ctx.position, ctx.call_timeout),
            (3, Duration::from_millis(50))
        );

        // The next instance's store is built on it.
        let store = store_for(&engine, ctx);
        assert_eq!(store.data().caps.plugin.as_ref(), "p");
    }
}
