//! Compiles the join protocol's messages with protox (pure Rust: no protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["vfl/join/v1/join.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .bytes(".vfl.join.v1.Tags.tags")
        .bytes(".vfl.join.v1.Matches.bits")
        .compile_fds(fds)?;
    Ok(())
}
