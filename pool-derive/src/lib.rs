//! Derive macros for `steadypool`.
