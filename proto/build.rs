//! Generates the block service's Rust code with a pure-Rust protobuf compiler (protox),
//! so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "tierkv/v1/block_service.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    tonic_prost_build::configure()
        // Block payloads as `bytes::Bytes`: zero-copy from tier to socket.
        .bytes(".")
        .codec_path("crate::codec::BlockCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
