//! xfer-autodiff.
