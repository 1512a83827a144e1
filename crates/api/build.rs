//! Compiles proto/ with protox (pure Rust: no protoc on the machine) and generates tonic stubs, plus
//! an encoded descriptor set that the servers hand to gRPC reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "../../proto/routeplane/ipam/v1/ipam.proto",
        "../../proto/routeplane/bgp/v1/bgp.proto",
        "../../proto/routeplane/agent/v1/agent.proto",
        "../../proto/routeplane/agent/v1/cni.proto",
    ];
    println!("cargo:rerun-if-changed=../../proto");
    let fds = protox::compile(protos, ["../../proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("routeplane_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
