//! Compiles the protocol with protox (pure Rust: no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["vfl/bridge/v1/bridge.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".vfl.bridge.v1.Tensor.data")
        .compile_fds(fds)?;
    Ok(())
}
