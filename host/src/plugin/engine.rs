//! The wasmtime engine shared by every plugin: configuration (pooling
//! allocator, epoch interruption), the epoch ticker, and the compile cache
//! (in memory, plus precompiled artifacts on disk keyed by content hash and
//! engine version so a restart does not recompile).

use super::PluginError;
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances. A plugin call's deadline is checked at each
/// tick, so a looping plugin is stopped within one tick past its deadline;
/// a long-running call also yields to other tasks at each tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// Largest linear memory any plugin instance may have (the per-plugin
/// `memory_limit_bytes` is enforced below this).
pub const MAX_MEMORY_BYTES: usize = 1 << 30;

/// Engine-wide limits.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Directory for precompiled artifacts; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Maximum live component instances (pooling allocator capacity).
    pub max_instances: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cache_dir: None,
            max_instances: 1000,
        }
    }
}

/// Where a component came from when loaded, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Found in the in-memory cache.
    Memory,
    /// Loaded from a precompiled artifact on disk.
    Disk,
    /// Compiled with Cranelift.
    Compiled,
}

/// The shared engine and compile cache.
pub struct PluginEngine {
    engine: Engine,
    memory: moka::sync::Cache<[u8; 32], Component>,
    cache_dir: Option<PathBuf>,
    engine_tag: String,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// Bytes of each linear memory kept resident (and reset with memset) when a
/// pool slot is reused.
const KEEP_RESIDENT_BYTES: usize = 1 << 20;

impl PluginEngine {
    /// Build the engine and start its epoch ticker thread.
    pub fn new(options: &EngineOptions) -> Result<Self, PluginError> {
        let mut pool = PoolingAllocationConfig::default();
        let n = options.max_instances.max(1);
        pool.total_component_instances(n)
            // A Rust wasip2 component holds a handful of core instances
            // (module + adapter shims); a componentize-py component holds
            // 14, componentize-js about 10.
            .total_core_instances(n.saturating_mul(16))
            .total_memories(n.saturating_mul(2))
            .total_tables(n.saturating_mul(8))
            .total_stacks(n)
            .max_memory_size(MAX_MEMORY_BYTES)
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(64)
            .table_elements(100_000)
            .max_unused_warm_slots(n.min(100))
            // Reset a reused slot with memset instead of madvise + page
            // faults (PAGEMAP_SCAN finds the dirty pages on Linux ≥ 6.7).
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(64 * 1024)
            .async_stack_keep_resident(64 * 1024)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .max_wasm_stack(1 << 20)
            .async_stack_size(2 << 20)
            .parallel_compilation(true);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        {
            let weak = engine.weak();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("ficus-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        match weak.upgrade() {
                            Some(e) => e.increment_epoch(),
                            None => break,
                        }
                    }
                })
                .map_err(|e| PluginError::Engine(format!("cannot start epoch thread: {e}")))?;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_tag = format!("{:016x}", h.finish());
        Ok(PluginEngine {
            engine,
            memory: moka::sync::Cache::builder().max_capacity(256).build(),
            cache_dir: options.cache_dir.clone(),
            engine_tag,
            stop_ticker: stop,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Load a component from a file through the caches, with its content
    /// hash (used to reuse unchanged plugins across reloads).
    pub fn load(&self, path: &Path) -> Result<Loaded, PluginError> {
        let bytes = std::fs::read(path)
            .map_err(|e| PluginError::Load(format!("cannot read {}: {e}", path.display())))?;
        self.load_bytes(&bytes)
            .map_err(|e| PluginError::Load(format!("{}: {e}", path.display())))
    }

    /// Load a component from its bytes through the caches (hashing them
    /// once: the hash keys both caches and is returned for reuse checks).
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Loaded, String> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        let loaded = |component, outcome| Loaded {
            component,
            hash,
            outcome,
        };
        if let Some(c) = self.memory.get(&hash) {
            return Ok(loaded(c, CacheOutcome::Memory));
        }
        let artifact = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{}-{}.cwasm", hex::encode(hash), self.engine_tag)));
        if let Some(path) = artifact.as_ref().filter(|p| p.exists()) {
            // SAFETY: the artifact was written by `Component::serialize` of an
            // engine with the same compatibility hash (it is in the file name),
            // into a cache directory owned by this gateway. wasmtime further
            // checks the artifact's header and engine settings on load.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(c) => {
                    self.memory.insert(hash, c.clone());
                    return Ok(loaded(c, CacheOutcome::Disk));
                }
                Err(e) => tracing::warn!(
                    artifact = %path.display(),
                    "ignoring unusable precompiled artifact: {e:#}"
                ),
            }
        }
        let started = Instant::now();
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| format!("not a valid component: {e:#}"))?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compiled component"
        );
        if let Some(path) = artifact {
            if let Err(e) = write_artifact(&component, &path) {
                tracing::warn!(artifact = %path.display(), "cannot write precompiled artifact: {e}");
            }
        }
        self.memory.insert(hash, component.clone());
        Ok(loaded(component, CacheOutcome::Compiled))
    }
}

/// A loaded component and its identity.
#[derive(Clone)]
pub struct Loaded {
    /// The compiled component.
    pub component: Component,
    /// SHA-256 of the component's bytes.
    pub hash: [u8; 32],
    /// Which cache (if any) it came from.
    pub outcome: CacheOutcome,
}

fn write_artifact(component: &Component, path: &Path) -> std::io::Result<()> {
    let bytes = component
        .serialize()
        .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
