//! Generates the tonic client and server code from `proto/` into OUT_DIR, using the
//! bundled protoc so no system install is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free in edition 2021: build scripts are single-threaded here.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/rewind/v1/coordinator.proto"], &["proto"])?;
    Ok(())
}
