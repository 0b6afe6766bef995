//! xfer-data.
