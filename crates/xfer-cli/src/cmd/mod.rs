//! One module per subcommand; each owns its clap arguments and a `run` function.

pub mod convert;
pub mod data;
pub mod doctor;
pub mod embed;
pub mod evaluate;
pub mod export;
pub mod extract;
pub mod finetune;
pub mod head;
pub mod predict;
pub mod quantize;
pub mod report;
pub mod store;
pub mod train_graph;
