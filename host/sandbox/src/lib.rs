//! The wasm sandbox for signed checks and the version selector.
