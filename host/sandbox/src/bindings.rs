//! Host bindings of the `molt:check` WIT contract (one module per world).

/// The `precheck` world.
pub mod precheck {
    wasmtime::component::bindgen!({ path: "../../wit", world: "precheck" });
}

/// The `selector` world (shares the `log` interface with `precheck`).
pub mod selector {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "selector",
        with: { "molt:check/log": crate::bindings::precheck::molt::check::log },
    });
}
