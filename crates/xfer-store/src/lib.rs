//! xfer-store.
