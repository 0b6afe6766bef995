//! xfer-finetune.
