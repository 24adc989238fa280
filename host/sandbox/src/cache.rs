//! The compile cache: compiled components on disk, keyed by the SHA-256 of the
//! (signed) wasm and the engine's fingerprint, so a warm run compiles nothing.
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use wasmtime::Engine;
use wasmtime::component::Component;

/// Counters of the compile cache (a warm run has `compiled == 0`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub compiled: usize,
    pub loaded: usize,
}

/// Why a component could not be made ready to run.
#[derive(Debug, thiserror::Error)]
#[error("does not compile: {0}")]
pub struct CompileError(String);

/// The cache dir and its counters.
pub(crate) struct Cache {
    dir: PathBuf,
    /// The engine's precompile compatibility hash (wasmtime version and config).
    fingerprint: String,
    compiled: AtomicUsize,
    loaded: AtomicUsize,
}

pub(crate) fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

impl Cache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> Cache {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        Cache {
            dir,
            fingerprint: format!("{:016x}", h.finish()),
            compiled: AtomicUsize::new(0),
            loaded: AtomicUsize::new(0),
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
        }
    }

    /// Load a compiled component from the cache, or compile and store it. The
    /// key is the SHA-256 of the (signed) wasm plus the engine fingerprint
    /// (wasmtime version and config); only files this cache wrote are read.
    pub(crate) fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        sha: &str,
    ) -> Result<Component, CompileError> {
        let path = self.dir.join(format!("{sha}-{}.cwasm", self.fingerprint));
        if path.is_file() {
            // SAFETY: the cache dir is the agent's own state and the file name
            // carries the digest of the verified wasm; wasmtime also checks the
            // engine compatibility header and refuses a mismatch.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => {
                    self.loaded.fetch_add(1, Ordering::Relaxed);
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "Compile cache entry unusable; recompiling");
                }
            }
        }
        let c = Component::new(engine, wasm).map_err(|e| CompileError(format!("{e:#}")))?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        match c.serialize() {
            Ok(bytes) => {
                let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                if let Err(e) =
                    std::fs::write(&tmp, &bytes).and_then(|_| std::fs::rename(&tmp, &path))
                {
                    let _ = std::fs::remove_file(&tmp);
                    tracing::warn!(file = %path.display(), error = %e, "Cannot write compile cache entry");
                }
            }
            Err(e) => tracing::warn!(error = %e, "Cannot serialize compiled component"),
        }
        Ok(c)
    }
}
