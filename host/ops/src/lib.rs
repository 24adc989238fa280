//! Operator tools: `molt status`, `molt diagnose`, `molt repair`, `molt import`.
