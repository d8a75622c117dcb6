//! The commands: `run` (serve until SIGINT/SIGTERM) and `check` (build
//! everything a run would, report every error, serve nothing).

use crate::admin::{self, Admin};
use crate::capability::leader::file::FileLeases;
use crate::capability::leader::{Elector, ElectorOptions};
use crate::capability::metrics;
use crate::capability::state::embedded::EmbeddedState;
use crate::capability::{leader, pubsub, Services};
use crate::gateway::Gateway;
use crate::plugin::engine::{EngineOptions, PluginEngine};
use crate::plugin::tick::{build_ticks, Scheduler};
use crate::projection::{build_projections, Projections};
use crate::reload::{Reloader, Trigger};
use crate::server::{self, ServerOptions};
use anyhow::{anyhow, Context};
use ficus_config::{Config, ConfigErrors};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;

fn engine_for(config: &Config) -> anyhow::Result<PluginEngine> {
    let options = EngineOptions {
        cache_dir: Some(config.resolve(&config.server.cache_dir)),
        max_instances: config.server.max_plugin_instances,
    };
    PluginEngine::new(&options).map_err(|e| anyhow!("{e}"))
}

/// Services for a process without subscriptions or elections (benchmarks,
/// tools).
pub fn services_in_process() -> Services {
    Services {
        state: Arc::new(EmbeddedState::default()),
        pubsub: Arc::new(pubsub::broker::Broker::detached(
            ficus_config::PubSub::default().max_message_bytes as usize,
        )),
        leader: Arc::new(leader::NoElections),
        events: None,
        read_models: None,
    }
}

/// The elector of this node's election groups (`[leader]` and the groups of
/// `[[ticks]]`) on the embedded backend, with leases under
/// `<backend.data_dir>/leader/`. Nothing runs (and nothing is written) until
/// it is started.
pub fn elector_for(config: &Config) -> Arc<Elector> {
    let options = ElectorOptions::from_config(config);
    let dir = config.resolve(&config.backend.data_dir).join("leader");
    // A lock is held for microseconds; waiting longer than a retry period
    // means its holder is stopped: give up for this round.
    let lock_timeout = options.retry_period.min(Duration::from_millis(500));
    Arc::new(Elector::new(
        options,
        Arc::new(FileLeases::new(&dir, lock_timeout)),
    ))
}

/// The elector `run` starts: [`elector_for`] on the embedded backend; with
/// `[backend] kind = "nats"` the same election on leases in the JetStream
/// key-value bucket `FICUS_LEADER` (`backend.replicas` copies) on
/// `backend.servers`.
pub async fn elector_to_run(config: &Config) -> anyhow::Result<Arc<Elector>> {
    let backend = &config.backend;
    if backend.kind != ficus_config::BackendKind::Nats {
        return Ok(elector_for(config));
    }
    let credentials = backend.credentials.as_ref().map(|c| config.resolve(c));
    let client = crate::capability::nats::connect(
        "ficus-leader",
        &backend.servers,
        credentials.as_deref(),
        crate::capability::nats::Initial::Required,
    )
    .await
    .map_err(|e| anyhow!("leader election ([backend] kind = \"nats\"): {e}"))?;
    let version = client.server_info().version;
    if backend.replicas() > 1 && !crate::capability::events::nats::safe_with_replicas(&version) {
        return Err(anyhow!(
            "leader election ([backend] kind = \"nats\"): nats-server {version} is too old for \
             replicas = {}: replicated buckets need nats-server >= 2.10.8",
            backend.replicas()
        ));
    }
    let leases = crate::capability::leader::nats::NatsLeases::open(
        client,
        crate::capability::leader::nats::DEFAULT_BUCKET,
        usize::from(backend.replicas()),
    )
    .await
    .map_err(|e| anyhow!("leader election ([backend] kind = \"nats\"): {e}"))?;
    Ok(Arc::new(Elector::new(
        ElectorOptions::from_config(config),
        Arc::new(leases),
    )))
}

/// The event store, opened only when some plugin is granted `events` or
/// some projection is configured (processes that share a data directory
/// for leader election need not share an event store): with `[backend] kind = "embedded"` the redb file
/// `<backend.data_dir>/events.redb`, with `kind = "nats"` the JetStream
/// stream `backend.events_stream` on `backend.servers`.
pub async fn events_for(
    config: &Config,
) -> anyhow::Result<Option<Arc<dyn crate::capability::events::EventStore>>> {
    use crate::capability::events::{embedded::EmbeddedEvents, nats};
    let wanted = !config.projections.is_empty()
        || config
            .plugins
            .values()
            .any(|p| p.grants.contains(&ficus_config::Grant::Events));
    if !wanted {
        return Ok(None);
    }
    let backend = &config.backend;
    match backend.kind {
        ficus_config::BackendKind::Embedded => {
            let path = config.resolve(&backend.data_dir).join("events.redb");
            let store = EmbeddedEvents::open(&path)
                .map_err(|e| anyhow!("the event store (backend.data_dir): {e}"))?;
            Ok(Some(Arc::new(store)))
        }
        ficus_config::BackendKind::Nats => {
            let options = nats::NatsEventsOptions {
                credentials: backend.credentials.as_ref().map(|c| config.resolve(c)),
                stream: backend.events_stream().to_owned(),
                replicas: usize::from(backend.replicas()),
                ..nats::NatsEventsOptions::new(backend.servers.clone())
            };
            let store = nats::NatsEvents::open(options)
                .await
                .map_err(|e| anyhow!("the event store ([backend] kind = \"nats\"): {e}"))?;
            tracing::info!(
                servers = %backend.servers.join(", "),
                stream = backend.events_stream(),
                server_version = store.server_version(),
                "event store on NATS JetStream"
            );
            Ok(Some(Arc::new(store)))
        }
    }
}

/// The read models, opened only when some projection is configured or some
/// plugin is granted `read-model`: with `[backend] kind = "embedded"` the
/// redb file `<backend.data_dir>/readmodels.redb`; with `kind = "nats"` the
/// JetStream log `backend.readmodels_stream` on `backend.servers`,
/// materialised into `<backend.data_dir>/readmodels-nats.redb` (rebuilt
/// from the log here, before this returns).
pub async fn read_models_for(
    config: &Config,
) -> anyhow::Result<Option<Arc<crate::capability::readmodel::ReadModelService>>> {
    use crate::capability::readmodel::{embedded::EmbeddedReadModels, nats, ReadModelService};
    let wanted = !config.projections.is_empty()
        || config
            .plugins
            .values()
            .any(|p| p.grants.contains(&ficus_config::Grant::ReadModel));
    if !wanted {
        return Ok(None);
    }
    let backend = &config.backend;
    let data_dir = config.resolve(&backend.data_dir);
    let store: Arc<dyn crate::capability::readmodel::ReadModels> = match backend.kind {
        ficus_config::BackendKind::Embedded => Arc::new(
            EmbeddedReadModels::open(&data_dir.join("readmodels.redb"))
                .map_err(|e| anyhow!("the read models (backend.data_dir): {e}"))?,
        ),
        ficus_config::BackendKind::Nats => {
            std::fs::create_dir_all(&data_dir).map_err(|e| {
                anyhow!(
                    "the read models (backend.data_dir {}): {e}",
                    data_dir.display()
                )
            })?;
            let options = nats::NatsReadModelsOptions {
                credentials: backend.credentials.as_ref().map(|c| config.resolve(c)),
                stream: backend.readmodels_stream().to_owned(),
                replicas: usize::from(backend.replicas()),
                ..nats::NatsReadModelsOptions::new(
                    backend.servers.clone(),
                    data_dir.join("readmodels-nats.redb"),
                )
            };
            let store = nats::NatsReadModels::open(options)
                .await
                .map_err(|e| anyhow!("the read models ([backend] kind = \"nats\"): {e}"))?;
            tracing::info!(
                servers = %backend.servers.join(", "),
                stream = backend.readmodels_stream(),
                applied = store.applied(),
                "read models on NATS JetStream"
            );
            Arc::new(store)
        }
    };
    Ok(Some(Arc::new(ReadModelService {
        store,
        models: config.projections.iter().map(|p| p.name.clone()).collect(),
    })))
}

/// What `/admin/backend` reports on: the data directory, or an admin
/// connection to the NATS servers and the streams this node uses.
async fn backend_info(config: &Config) -> anyhow::Result<crate::admin::backend::BackendInfo> {
    use crate::admin::backend::BackendInfo;
    let backend = &config.backend;
    if backend.kind != ficus_config::BackendKind::Nats {
        return Ok(BackendInfo::Embedded {
            data_dir: config.resolve(&backend.data_dir),
        });
    }
    let mut streams = vec![format!(
        "KV_{}",
        crate::capability::leader::nats::DEFAULT_BUCKET
    )];
    let uses_events = !config.projections.is_empty()
        || config
            .plugins
            .values()
            .any(|p| p.grants.contains(&ficus_config::Grant::Events));
    if uses_events {
        streams.push(backend.events_stream().to_owned());
    }
    let uses_read_models = !config.projections.is_empty()
        || config
            .plugins
            .values()
            .any(|p| p.grants.contains(&ficus_config::Grant::ReadModel));
    if uses_read_models {
        streams.push(backend.readmodels_stream().to_owned());
    }
    if !config.subscriptions.is_empty() {
        streams.push(crate::capability::pubsub::nats::DEFAULT_STREAM.to_owned());
    }
    BackendInfo::connect_nats(
        backend.servers.clone(),
        backend.credentials.as_ref().map(|c| config.resolve(c)),
        backend.replicas(),
        streams,
    )
    .await
}

fn services_for(config: &Config) -> Services {
    Services {
        // Not started: `check` builds plugins against it, `run` replaces it
        // with the elector it starts.
        leader: elector_for(config),
        ..services_in_process()
    }
}

/// Resolves when the process gets SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Serve with `config` (loaded from `config_path`) until SIGINT or
/// SIGTERM, then drain in-flight requests. SIGHUP, `POST /admin/reload` and
/// changes to the config or plugin files reload it.
pub async fn run(config: Config, config_path: &Path) -> anyhow::Result<()> {
    let prometheus = metrics::install();
    // Histograms keep raw samples until upkeep folds them in; without it
    // memory grows when nobody scrapes /metrics.
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            prometheus.run_upkeep();
        }
    });
    let engine = Arc::new(engine_for(&config)?);
    let broker = pubsub::Backend::open(&config).await?;
    let elector = elector_to_run(&config).await?;
    let services = Services {
        leader: elector.clone(),
        pubsub: broker.publisher(),
        events: events_for(&config).await?,
        read_models: read_models_for(&config).await?,
        ..services_for(&config)
    };
    let (gateway, _) = Gateway::build(&config, &engine, &services, None)
        .await
        .map_err(|e| anyhow!("the configuration cannot be served:\n{e}"))?;
    let ticks = build_ticks(&config, &engine, &services)
        .await
        .map_err(|e| anyhow!("the configuration cannot be served:\n{e}"))?;
    let subscribers = pubsub::broker::load_subscribers(&config, &engine, &services)
        .await
        .map_err(|e| anyhow!("the configuration cannot be served:\n{}", ConfigErrors(e)))?;
    let projections = build_projections(&config, &engine, &services)
        .await
        .map_err(|e| anyhow!("the configuration cannot be served:\n{e}"))?;
    broker.start(subscribers);
    let event_store = services.events.clone();
    let read_models = services.read_models.clone();
    let reloader = Arc::new(Reloader::new(
        &config,
        config_path,
        engine.clone(),
        services,
        gateway,
    ));
    ::metrics::gauge!("ficus_generation").set(1.0);

    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {} (server.listen)", config.server.listen))?;
    let admin_listener = TcpListener::bind(config.server.admin)
        .await
        .with_context(|| format!("cannot listen on {} (server.admin)", config.server.admin))?;
    let proxy_addr = listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    // Campaign once before announcing readiness (a node alone leads at
    // once), and only once nothing can fail any more: a process that exits
    // on an error here would otherwise hold a lease it never renews.
    elector.start().await;
    let scheduler = Scheduler::start(ticks, elector.clone());
    let projections = Arc::new(match (event_store.clone(), read_models) {
        (Some(events), Some(models)) if !projections.is_empty() => {
            Projections::start(projections, elector.clone(), events, models.store.clone())
        }
        _ => Projections::none(),
    });
    if let Err(e) = reloader.watch() {
        tracing::warn!(
            "file watching is unavailable, reload with SIGHUP or POST /admin/reload: {e}"
        );
    }
    // Install the SIGHUP handler before announcing readiness: until then a
    // SIGHUP would still terminate the process.
    let hup_task = tokio::spawn(reload_on_sighup(reloader.clone(), hangup_signal()));
    tracing::info!(%proxy_addr, %admin_addr, "ficus is serving");
    // A stable line on stdout that scripts and tests can read.
    println!("ficus listening on http://{proxy_addr} admin http://{admin_addr}");
    let _ = std::io::stdout().flush();

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let admin = Arc::new(Admin {
        reloader: reloader.clone(),
        token: config.server.admin_token.clone(),
        started: SystemTime::now(),
        leader: elector.clone(),
        pubsub: broker.publisher(),
        events: event_store,
        projections: projections.clone(),
        backend: backend_info(&config).await?,
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, admin, wait(stop_rx.clone())));
    let options = ServerOptions {
        max_header_bytes: config.server.max_header_bytes,
        max_headers: config.server.max_headers,
        http2: config.server.http2,
        shutdown_grace: Duration::from_millis(config.server.shutdown_grace_ms),
        header_read_timeout: Duration::from_millis(config.server.header_read_timeout_ms),
    };
    let proxy = server::serve(listener, reloader.gateway(), options, wait(stop_rx));
    tokio::pin!(proxy);
    tokio::select! {
        _ = &mut proxy => {}
        _ = shutdown_signal() => {
            tracing::info!("shutdown requested");
            let _ = stop_tx.send(true);
            // Stop ticks and projections, then resign at once (another node
            // takes over within a retry period) while in-flight requests
            // drain.
            scheduler.shutdown().await;
            projections.shutdown().await;
            elector.shutdown().await;
            proxy.await;
        }
    }
    scheduler.shutdown().await;
    projections.shutdown().await;
    elector.shutdown().await;
    // Subscribers finish the message in hand; the store flushes and closes.
    broker
        .shutdown(Duration::from_millis(config.server.shutdown_grace_ms))
        .await;
    let _ = stop_tx.send(true);
    hup_task.abort();
    upkeep.abort();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

/// Register for SIGHUP (registration replaces the default action, which
/// would terminate the process).
fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("cannot handle SIGHUP: {e}");
                None
            }
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

async fn reload_on_sighup(reloader: Arc<Reloader>, hangup: Hangup) {
    #[cfg(unix)]
    {
        let Some(mut hup) = hangup else { return };
        while hup.recv().await.is_some() {
            reloader.reload(Trigger::Signal).await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (reloader, hangup);
    }
}

/// Validate the config at `path` and build everything a run would
/// (compile, link, instantiate and configure every plugin). Returns a
/// summary, or every error found.
pub async fn check(path: &Path) -> Result<String, ConfigErrors> {
    let config = ficus_config::load(path)?;
    let engine =
        engine_for(&config).map_err(|e| ConfigErrors(vec![config.error_at("", e.to_string())]))?;
    let services = services_for(&config);
    let built = Gateway::build(&config, &engine, &services, None).await;
    // Ticks are checked even when the gateway has errors: report all at once.
    let ticks = build_ticks(&config, &engine, &services).await;
    // Subscribers too; the durable store is not opened (a running gateway
    // may hold it).
    let subscribers = pubsub::broker::load_subscribers(&config, &engine, &services).await;
    // Projections link against the capabilities only; nothing is opened.
    let projections = build_projections(&config, &engine, &services).await;
    let mut errors = Vec::new();
    let gateway = match built {
        Ok((gateway, _)) => Some(gateway),
        Err(e) => {
            errors.extend(e.0);
            None
        }
    };
    if let Err(e) = ticks {
        errors.extend(e.0);
    }
    if let Err(e) = subscribers {
        errors.extend(e);
    }
    if let Err(e) = projections {
        errors.extend(e.0);
    }
    let Some(gateway) = gateway.filter(|_| errors.is_empty()) else {
        return Err(ConfigErrors(errors));
    };
    let routes = gateway.summary();
    let mut out = format!(
        "{}: ok ({} plugins, {} upstreams, {} routes)\n",
        path.display(),
        config.plugins.len(),
        config.upstreams.len(),
        routes.len()
    );
    for r in routes {
        out.push_str(&format!(
            "  route {}: [{}]\n",
            r.name,
            r.pipeline.join(" -> ")
        ));
    }
    for sub in &config.subscriptions {
        out.push_str(&format!(
            "  subscription {}: {} -> {} ({}{})\n",
            sub.name,
            sub.subject,
            sub.plugin,
            sub.delivery.as_str(),
            sub.queue
                .as_ref()
                .map(|q| format!(", queue {q}"))
                .unwrap_or_default()
        ));
    }
    for tick in &config.ticks {
        out.push_str(&format!(
            "  tick {}: {} every {} on the leader of group {}\n",
            tick.name, tick.plugin, tick.every, tick.group
        ));
    }
    for p in &config.projections {
        out.push_str(&format!(
            "  projection {}: {} on the leader of group {}\n",
            p.name, p.plugin, p.group
        ));
    }
    Ok(out)
}
