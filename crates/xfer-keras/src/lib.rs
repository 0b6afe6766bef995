//! xfer-keras.
