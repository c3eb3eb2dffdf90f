//! Compiles the `.proto` files with protox (pure Rust), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/onnx.proto", "proto/weightcast/v1/weightcast.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new()
        // Tensor bytes stay views into the memory-mapped model: no copy on decode.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
