//! Generates the ONNX protobuf messages from the vendored `proto/onnx.proto3`.
//!
//! `protox` (a protobuf compiler written in Rust) parses the schema into a
//! descriptor set and `prost-build` turns it into Rust types, so building needs
//! no `protoc`.

use std::error::Error;

const PROTO_DIR: &str = "proto";
const PROTO_FILE: &str = "onnx.proto3";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}/{PROTO_FILE}");
    let descriptors = protox::compile([PROTO_FILE], [PROTO_DIR])?;
    prost_build::Config::new()
        // The schema's comments are written for protoc users; their indented
        // examples would become failing doctests. `proto/onnx.proto3` is the
        // documentation of every message and field.
        .disable_comments(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
