//! Helpers for the end-to-end tests: start real `molt serve` and agents.
