//! Compiles the protocol with protox (pure Rust: no protoc needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["vfl/bridge/v1/bridge.proto", "vfl/party/v1/party.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".vfl.bridge.v1.Tensor.data")
        .bytes(".vfl.party.v1.Params.values")
        .bytes(".vfl.party.v1.Dense.values")
        .compile_fds(fds)?;
    Ok(())
}
