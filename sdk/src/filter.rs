//! The [`Filter`] trait and the glue behind [`export_filter!`](crate::export_filter).

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::{AttemptInfo, HookSet, Request, RequestAction, Response, ResponseAction};

/// A gateway filter: what a plugin author implements.
///
/// The host calls [`Filter::configure`] once per plugin instance with the
/// route's config, then [`Filter::on_request`] for every request (in pipeline
/// order) and [`Filter::on_response`] for every response (in reverse order).
/// Only `configure` is required; the hooks default to `Continue`.
///
/// Register the type with [`export_filter!`](crate::export_filter).
pub trait Filter: Sized + 'static {
    /// Build the instance from its per-route config (JSON text, `{}` when
    /// absent). `Err` rejects the config with the message: the host reports it
    /// with the plugin and route names and refuses the configuration.
    ///
    /// Use [`config()`](crate::config) to deserialize the text into a typed
    /// struct.
    fn configure(config: &str) -> Result<Self, String>;

    /// Which hooks to call (default: both). Lets the host skip calls that
    /// would only return `Continue`. Asked once, right after `configure`.
    fn hooks(&self) -> HookSet {
        HookSet::ON_REQUEST | HookSet::ON_RESPONSE
    }

    /// Called for every request on the route before the upstream is called.
    /// Edit the request through `req`, then continue, respond directly or
    /// choose an upstream (see [`RequestAction`]). Default: `Continue`.
    fn on_request(&mut self, req: &Request) -> RequestAction {
        let _ = req;
        RequestAction::Continue
    }

    /// Called for every response (including the gateway's own 502/503/504
    /// when the upstream failed, see [`AttemptInfo::error`]). Edit the
    /// response through `resp`, then continue, replace it or ask for a retry
    /// (see [`ResponseAction`]). Default: `Continue`.
    fn on_response(
        &mut self,
        req: &Request,
        resp: &Response,
        attempt: &AttemptInfo,
    ) -> ResponseAction {
        let _ = (req, resp, attempt);
        ResponseAction::Continue
    }
}

/// Where [`export_filter!`](crate::export_filter) keeps the configured
/// instance.
#[doc(hidden)]
pub type Slot<F> = LocalKey<RefCell<Option<F>>>;

/// `configure` export: build a new instance and replace the stored one. On
/// error the previous instance (if any) is kept.
#[doc(hidden)]
pub fn configure<F: Filter>(slot: &'static Slot<F>, config: &str) -> Result<HookSet, String> {
    let instance = F::configure(config)?;
    let hooks = instance.hooks();
    slot.try_with(|cell| match cell.try_borrow_mut() {
        Ok(mut current) => {
            *current = Some(instance);
            Ok(hooks)
        }
        Err(_) => Err("ficus-sdk: configure called while a hook is running".to_string()),
    })
    .unwrap_or_else(|_| Err("ficus-sdk: the filter instance storage is gone".to_string()))
}

/// `on-request` export: `Continue` when not configured.
#[doc(hidden)]
pub fn on_request<F: Filter>(slot: &'static Slot<F>, req: &Request) -> RequestAction {
    slot.try_with(|cell| match cell.try_borrow_mut() {
        Ok(mut current) => match current.as_mut() {
            Some(filter) => filter.on_request(req),
            None => RequestAction::Continue,
        },
        Err(_) => RequestAction::Continue,
    })
    .unwrap_or(RequestAction::Continue)
}

/// `on-response` export: `Continue` when not configured.
#[doc(hidden)]
pub fn on_response<F: Filter>(
    slot: &'static Slot<F>,
    req: &Request,
    resp: &Response,
    attempt: &AttemptInfo,
) -> ResponseAction {
    slot.try_with(|cell| match cell.try_borrow_mut() {
        Ok(mut current) => match current.as_mut() {
            Some(filter) => filter.on_response(req, resp, attempt),
            None => ResponseAction::Continue,
        },
        Err(_) => ResponseAction::Continue,
    })
    .unwrap_or(ResponseAction::Continue)
}

/// Export a [`Filter`] implementation as the plugin's `filter-hooks`.
///
/// Use it once per plugin crate, at the crate root:
///
/// ```rust,no_run
/// use ficus_sdk::prelude::*;
///
/// struct Noop;
///
/// impl Filter for Noop {
///     fn configure(_config: &str) -> Result<Self, String> {
///         Ok(Noop)
///     }
/// }
///
/// ficus_sdk::export_filter!(Noop);
/// ```
///
/// The configured instance lives in a thread-local slot: `configure` replaces
/// it (keeping the old one if the new config is rejected), and hooks called
/// before a successful `configure` return `Continue`.
#[macro_export]
macro_rules! export_filter {
    ($ty:ty) => {
        const _: () = {
            ::std::thread_local! {
                static __FICUS_FILTER_INSTANCE: $crate::__private::RefCell<::core::option::Option<$ty>> =
                    const { $crate::__private::RefCell::new(::core::option::Option::None) };
            }

            struct __FicusFilterExport;

            impl $crate::wit::exports::ficus::gateway::filter_hooks::Guest for __FicusFilterExport {
                fn configure(
                    config: ::std::string::String,
                ) -> ::core::result::Result<$crate::HookSet, ::std::string::String> {
                    $crate::__private::configure::<$ty>(&__FICUS_FILTER_INSTANCE, &config)
                }

                fn on_request(req: &$crate::Request) -> $crate::RequestAction {
                    $crate::__private::on_request::<$ty>(&__FICUS_FILTER_INSTANCE, req)
                }

                fn on_response(
                    req: &$crate::Request,
                    resp: &$crate::Response,
                    attempt: $crate::AttemptInfo,
                ) -> $crate::ResponseAction {
                    $crate::__private::on_response::<$ty>(
                        &__FICUS_FILTER_INSTANCE,
                        req,
                        resp,
                        &attempt,
                    )
                }
            }

            $crate::wit::export!(__FicusFilterExport with_types_in $crate::wit);
        };
    };
}
