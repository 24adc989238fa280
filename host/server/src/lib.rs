//! The control plane (`molt serve`).
