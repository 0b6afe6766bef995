//! xfer-head.
