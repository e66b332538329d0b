//! Generates the block service's (and etcd's client) Rust code with a pure-Rust protobuf compiler (protox),
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

    // etcd's v3 API (the subset discovery uses), client side only, standard codec.
    let etcd = "etcd/etcd.proto";
    println!("cargo:rerun-if-changed={etcd}");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(protox::compile([etcd], ["."])?)?;
    Ok(())
}
