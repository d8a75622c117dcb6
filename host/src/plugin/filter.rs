//! Filter plugin instances: creation, the warm pool, and hook calls under a
//! deadline and a memory limit.
//!
//! One [`FilterPool`] exists per pipeline step (plugin × route), holding up
//! to `pool_size` configured, warm instances. A request checks an instance
//! out for one hook call and returns it afterwards, so concurrent requests
//! never share an instance. An instance whose call failed (trap, timeout,
//! memory) is dropped — wasmtime refuses to re-enter it — and replaced on
//! demand. An instance whose memory has grown past three quarters of its
//! headroom (the limit minus its size after `configure`) is retired after
//! its call instead of going back to the pool: wasm memory never shrinks, so
//! a guest that grows slowly (a garbage-collected runtime such as
//! JavaScript's, or a leak) would otherwise fail a request when it finally
//! hits the limit. In `fresh` mode a request gets its own instance for both hooks
//! and drops it at the end.
//!
//! The pool is a stack (last in, first out): the instance checked out is the
//! one used most recently, whose memory, stack and store are still in the CPU's
//! caches. A queue would rotate every call through all idle instances.

use super::bindings::{AttemptInfo, HookSet, RequestAction, ResponseAction};
use super::ctx::{
    arm, classify, instantiation_error, new_store, recycle, store_for, Capabilities, PluginCtx,
    RequestHandle, ResponseHandle,
};
use super::engine::PluginEngine;
use super::linker::{check_imports, check_sync_imports, filter_linker};
use super::{Grants, Hook, PluginError};
use crate::pipeline::exchange::{RequestState, ResponseState};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, Resource};
use wasmtime::component::{
    ComponentExportIndex, ComponentNamedList, Func, InstancePre, Lift, Lower, TypedFunc,
};
use wasmtime::Store;

/// Everything needed to run one pipeline step.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterSpec {
    /// SHA-256 of the component (a changed file means a new pool).
    pub component: [u8; 32],
    /// Plugin name.
    pub plugin: Arc<str>,
    /// Route name.
    pub route: Arc<str>,
    /// Position in the route's pipeline.
    pub position: u16,
    /// The per-route config, as JSON text.
    pub config_json: String,
    /// Deadline for each call.
    pub timeout: Duration,
    /// Per-instance memory limit.
    pub memory_limit: usize,
    /// Maximum warm instances kept.
    pub pool_size: usize,
    /// A fresh instance per request instead of warm reuse.
    pub fresh: bool,
    /// Granted capabilities.
    pub grants: Grants,
    /// Call the hooks synchronously, without a fiber (`calls = "sync"`):
    /// faster, but a call that loops holds its worker thread until its
    /// deadline.
    pub sync_calls: bool,
}

/// A configured instance with its store.
pub struct Instance {
    store: Store<PluginCtx>,
    hooks: Hooks,
    /// Retire the instance once its memory grows past this many bytes.
    retire_above: usize,
}

/// The interface a filter plugin exports.
const HOOKS_INTERFACE: &str = "ficus:gateway/filter-hooks@0.1.0";

/// `configure`'s signature, as the WIT gives it.
type ConfigureFn<'a> = TypedFunc<(&'a str,), (Result<HookSet, String>,)>;
/// `on-request`'s signature.
type OnRequestFn = TypedFunc<(Resource<RequestHandle>,), (RequestAction,)>;
/// `on-response`'s signature.
type OnResponseFn<'a> = TypedFunc<
    (
        Resource<RequestHandle>,
        Resource<ResponseHandle>,
        &'a AttemptInfo,
    ),
    (ResponseAction,),
>;

/// Where the hooks are among the component's exports, found once per pool.
///
/// bindgen's `FilterPre::instantiate_async` looks every export up by name and
/// type-checks it again for each new instance (`get_typed_func`: ~3 % of an
/// instantiation's instructions). The pool checks the types on its first
/// instance and afterwards only fetches the functions by index: every
/// instance of a pool comes from the same component, so the types checked
/// on the first hold for all.
struct HookExports {
    configure: ComponentExportIndex,
    on_request: ComponentExportIndex,
    on_response: ComponentExportIndex,
}

impl HookExports {
    /// Find the hooks; the error names what is missing.
    fn new(component: &Component) -> Result<Self, String> {
        let iface = component
            .get_export_index(None, HOOKS_INTERFACE)
            .ok_or_else(|| format!("no export {HOOKS_INTERFACE}"))?;
        let func = |name: &str| {
            component
                .get_export_index(Some(&iface), name)
                .ok_or_else(|| format!("{HOOKS_INTERFACE} has no function {name}"))
        };
        Ok(HookExports {
            configure: func("configure")?,
            on_request: func("on-request")?,
            on_response: func("on-response")?,
        })
    }

    /// The hooks of `instance`, their types checked against the signatures
    /// above when `check_types`.
    fn load(
        &self,
        store: &mut Store<PluginCtx>,
        instance: &wasmtime::component::Instance,
        check_types: bool,
    ) -> wasmtime::Result<Hooks> {
        let mut func = |index: &ComponentExportIndex| {
            instance
                .get_func(&mut *store, index)
                .ok_or_else(|| wasmtime::format_err!("a hook export is not a function"))
        };
        let hooks = Hooks {
            configure: func(&self.configure)?,
            on_request: func(&self.on_request)?,
            on_response: func(&self.on_response)?,
        };
        if check_types {
            // The signatures `Hooks` calls them with, checked here once.
            let _: ConfigureFn<'_> = hooks.configure.typed(&mut *store)?;
            let _: OnRequestFn = hooks.on_request.typed(&mut *store)?;
            let _: OnResponseFn<'_> = hooks.on_response.typed(&mut *store)?;
        }
        Ok(hooks)
    }
}

/// One instance's hook functions, of the types [`HookExports::load`] checked
/// on the pool's first instance.
struct Hooks {
    configure: Func,
    on_request: Func,
    on_response: Func,
}

impl Hooks {
    fn configure<'a>(&self) -> ConfigureFn<'a> {
        // SAFETY: the pool's first instance, of the same component, checked
        // this export against exactly this signature (`HookExports::load`).
        unsafe { TypedFunc::new_unchecked(self.configure) }
    }

    fn on_request(&self) -> OnRequestFn {
        // SAFETY: as for `configure`.
        unsafe { TypedFunc::new_unchecked(self.on_request) }
    }

    fn on_response<'a>(&self) -> OnResponseFn<'a> {
        // SAFETY: as for `configure`.
        unsafe { TypedFunc::new_unchecked(self.on_response) }
    }
}

/// The memory size past which an instance that measured `baseline` bytes
/// after `configure` is retired: three quarters of the way to `limit`.
fn retire_threshold(baseline: usize, limit: usize) -> usize {
    baseline + limit.saturating_sub(baseline) / 4 * 3
}

/// Idle warm instances, most recently used on top, at most `capacity`.
struct WarmStack<T = Instance> {
    idle: std::sync::Mutex<Vec<T>>,
    capacity: usize,
}

impl<T> WarmStack<T> {
    fn new(capacity: usize) -> Self {
        WarmStack {
            idle: std::sync::Mutex::new(Vec::with_capacity(capacity)),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently returned instance.
    fn pop(&self) -> Option<T> {
        self.lock().pop()
    }

    /// Return an instance; a full stack hands it back (to be dropped, outside
    /// the lock).
    fn push(&self, instance: T) -> Result<(), T> {
        let mut idle = self.lock();
        if idle.len() >= self.capacity {
            return Err(instance);
        }
        idle.push(instance);
        Ok(())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The warm instances of one pipeline step.
pub struct FilterPool {
    spec: FilterSpec,
    pre: InstancePre<PluginCtx>,
    exports: HookExports,
    caps: Arc<Capabilities>,
    warm: WarmStack,
    /// The store data of dropped instances, to build new ones on
    /// ([`recycle`]): in `fresh` mode every request drops one.
    spare: WarmStack<PluginCtx>,
    hooks: HookSet,
}

impl FilterPool {
    /// Check, link, instantiate and configure the plugin once (so a bad
    /// plugin or config fails here, at load time), keeping that instance
    /// warm.
    pub async fn new(
        engine: &PluginEngine,
        component: &Component,
        spec: FilterSpec,
        caps: Arc<Capabilities>,
    ) -> Result<Self, PluginError> {
        check_imports(engine.engine(), component, &spec.plugin, spec.grants)?;
        if spec.sync_calls {
            check_sync_imports(engine.engine(), component)?;
        }
        let linker = filter_linker(engine.engine(), spec.grants, spec.sync_calls)?;
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|e| PluginError::Link(format!("cannot link: {e:#}")))?;
        let exports = HookExports::new(component).map_err(|missing| {
            PluginError::Link(format!(
                "not a filter plugin (expected a component exporting {HOOKS_INTERFACE}): {missing}"
            ))
        })?;
        let mut pool = FilterPool {
            warm: WarmStack::new(spec.pool_size.max(1)),
            spare: WarmStack::new(spec.pool_size.max(1)),
            spec,
            pre: instance_pre,
            exports,
            caps,
            hooks: HookSet::all(),
        };
        // The first instance checks the hooks' types; the pool's later
        // instances, of the same component, skip the check.
        let (first, hooks) = pool.instantiate_with(true).await?;
        pool.hooks = hooks;
        if !pool.spec.fresh {
            let _ = pool.warm.push(first);
        }
        Ok(pool)
    }

    /// The step's spec.
    pub fn spec(&self) -> &FilterSpec {
        &self.spec
    }

    /// Whether the plugin wants `on-request` calls.
    pub fn wants_request(&self) -> bool {
        self.hooks.contains(HookSet::ON_REQUEST)
    }

    /// Whether the plugin wants `on-response` calls.
    pub fn wants_response(&self) -> bool {
        self.hooks.contains(HookSet::ON_RESPONSE)
    }

    /// Number of warm instances currently idle in the pool.
    pub fn idle(&self) -> usize {
        self.warm.len()
    }

    fn new_store(&self) -> Store<PluginCtx> {
        if let Some(ctx) = self.spare.pop() {
            return store_for(self.pre.engine(), ctx);
        }
        let mut store = new_store(
            self.pre.engine(),
            self.caps.clone(),
            self.spec.grants,
            self.spec.memory_limit,
            self.spec.timeout,
            self.spec.position,
        );
        store.data_mut().sync_calls = self.spec.sync_calls;
        store
    }

    /// Create and configure a new instance.
    pub async fn instantiate(&self) -> Result<(Instance, HookSet), PluginError> {
        self.instantiate_with(false).await
    }

    async fn instantiate_with(
        &self,
        check_types: bool,
    ) -> Result<(Instance, HookSet), PluginError> {
        let mut store = self.new_store();
        arm(&mut store);
        let instance = if self.spec.sync_calls {
            self.pre.instantiate(&mut store)
        } else {
            self.pre.instantiate_async(&mut store).await
        };
        let instance = match instance {
            Ok(i) => i,
            Err(e) => return Err(instantiation_error(&mut store, e)),
        };
        let hooks = match self.exports.load(&mut store, &instance, check_types) {
            Ok(h) => h,
            Err(e) => {
                return Err(PluginError::Link(format!(
                    "not a filter plugin (expected a component exporting {HOOKS_INTERFACE}): {e:#}"
                )))
            }
        };
        arm(&mut store);
        let result = self
            .call(
                hooks.configure(),
                &mut store,
                (self.spec.config_json.as_str(),),
            )
            .await;
        match result {
            Ok((Ok(set),)) => {
                let retire_above =
                    retire_threshold(store.data().limiter.peak, self.spec.memory_limit);
                Ok((
                    Instance {
                        store,
                        hooks,
                        retire_above,
                    },
                    set,
                ))
            }
            Ok((Err(msg),)) => Err(PluginError::Rejected(msg)),
            Err(e) => Err(classify(&mut store, Hook::Configure, e)),
        }
    }

    /// Call `func` the way the spec says: on the worker thread
    /// (`calls = "sync"`) or on an async fiber.
    async fn call<P, R>(
        &self,
        func: TypedFunc<P, R>,
        store: &mut Store<PluginCtx>,
        args: P,
    ) -> wasmtime::Result<R>
    where
        P: ComponentNamedList + Lower + Send + Sync,
        R: ComponentNamedList + Lift + Send + Sync + 'static,
    {
        if self.spec.sync_calls {
            func.call(store, args)
        } else {
            func.call_async(store, args).await
        }
    }

    /// Drop an instance that leaves the pool (fresh mode at the end of its
    /// request, a failed call, retirement, a full pool), keeping its store
    /// data for the next instance.
    pub fn discard(&self, instance: Instance) {
        let _ = self.spare.push(recycle(instance.store));
    }

    async fn checkout(&self, slot: &mut Option<Instance>) -> Result<Instance, PluginError> {
        if let Some(i) = slot.take() {
            return Ok(i);
        }
        if !self.spec.fresh {
            if let Some(i) = self.warm.pop() {
                return Ok(i);
            }
        }
        Ok(self.instantiate().await?.0)
    }

    fn checkin(&self, slot: &mut Option<Instance>, instance: Instance) {
        if self.spec.fresh {
            *slot = Some(instance);
        } else if instance.store.data().limiter.peak > instance.retire_above {
            tracing::debug!(
                plugin = %self.spec.plugin,
                route = %self.spec.route,
                memory = instance.store.data().limiter.peak,
                "retiring a plugin instance near its memory limit"
            );
            ::metrics::counter!(
                "ficus_plugin_instances_retired_total",
                "plugin" => self.spec.plugin.to_string(),
                "route" => self.spec.route.to_string(),
                "reason" => "memory"
            )
            .increment(1);
            self.discard(instance);
        } else if let Err(extra) = self.warm.push(instance) {
            // A full pool drops the extra instance.
            self.discard(extra);
        }
    }

    /// Run `on-request`. The request is lent to the plugin for the call and
    /// always handed back. `slot` holds the request's own instance in
    /// fresh mode.
    pub async fn on_request(
        &self,
        slot: &mut Option<Instance>,
        req: Box<RequestState>,
    ) -> (Box<RequestState>, Result<RequestAction, PluginError>) {
        let mut inst = match self.checkout(slot).await {
            Ok(i) => i,
            Err(e) => return (req, Err(e)),
        };
        inst.store.data_mut().req = Some(req);
        arm(&mut inst.store);
        let result = self
            .call(
                inst.hooks.on_request(),
                &mut inst.store,
                (Resource::<RequestHandle>::new_borrow(0),),
            )
            .await
            .map(|(action,)| action);
        let req = inst
            .store
            .data_mut()
            .req
            .take()
            .expect("request lent for the call");
        match result {
            Ok(action) => {
                self.checkin(slot, inst);
                (req, Ok(action))
            }
            Err(e) => {
                let err = classify(&mut inst.store, Hook::OnRequest, e);
                self.discard(inst);
                (req, Err(err))
            }
        }
    }

    /// Run `on-response`; request and response are lent and handed back.
    pub async fn on_response(
        &self,
        slot: &mut Option<Instance>,
        req: Box<RequestState>,
        resp: Box<ResponseState>,
        attempt: &AttemptInfo,
    ) -> (
        Box<RequestState>,
        Box<ResponseState>,
        Result<ResponseAction, PluginError>,
    ) {
        let mut inst = match self.checkout(slot).await {
            Ok(i) => i,
            Err(e) => return (req, resp, Err(e)),
        };
        let data = inst.store.data_mut();
        data.req = Some(req);
        data.resp = Some(resp);
        arm(&mut inst.store);
        let result = self
            .call(
                inst.hooks.on_response(),
                &mut inst.store,
                (
                    Resource::<RequestHandle>::new_borrow(0),
                    Resource::<ResponseHandle>::new_borrow(0),
                    attempt,
                ),
            )
            .await
            .map(|(action,)| action);
        let data = inst.store.data_mut();
        let req = data.req.take().expect("request lent for the call");
        let resp = data.resp.take().expect("response lent for the call");
        match result {
            Ok(action) => {
                self.checkin(slot, inst);
                (req, resp, Ok(action))
            }
            Err(e) => {
                let err = classify(&mut inst.store, Hook::OnResponse, e);
                self.discard(inst);
                (req, resp, Err(err))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{retire_threshold, WarmStack};

    #[test]
    fn the_warm_pool_hands_out_the_most_recently_returned_instance() {
        let warm = WarmStack::new(2);
        assert_eq!(warm.pop(), None::<u32>);
        assert_eq!(warm.push(1), Ok(()));
        assert_eq!(warm.push(2), Ok(()));
        assert_eq!(warm.push(3), Err(3), "a full pool hands the extra one back");
        assert_eq!(warm.len(), 2);
        assert_eq!(warm.pop(), Some(2), "last in, first out");
        assert_eq!(warm.push(4), Ok(()));
        assert_eq!(warm.pop(), Some(4));
        assert_eq!(warm.pop(), Some(1));
        assert_eq!(warm.pop(), None);
    }

    #[test]
    fn retire_threshold_is_three_quarters_of_the_headroom() {
        const MIB: usize = 1 << 20;
        assert_eq!(retire_threshold(0, 16 * MIB), 12 * MIB);
        assert_eq!(retire_threshold(4 * MIB, 16 * MIB), 13 * MIB);
        // A baseline at or over the limit never underflows.
        assert_eq!(retire_threshold(16 * MIB, 16 * MIB), 16 * MIB);
        assert_eq!(retire_threshold(20 * MIB, 16 * MIB), 20 * MIB);
    }
}
