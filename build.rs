//! Generates the gRPC echo service of the gRPC examples (feature `grpc`) with
//! tonic-build's manual service definition: the messages are plain prost structs in
//! `src/grpc.rs`, so no `.proto` file and no `protoc` are needed.

fn main() {
    #[cfg(feature = "grpc")]
    echo_service();
}

#[cfg(feature = "grpc")]
fn echo_service() {
    use tonic_build::manual::{Builder, Method, Service};

    let echo = Method::builder()
        .name("echo")
        .route_name("Echo")
        .input_type("crate::grpc::EchoRequest")
        .output_type("crate::grpc::EchoReply")
        .codec_path("tonic_prost::ProstCodec")
        .build();
    let service = Service::builder()
        .name("Echo")
        .package("kvstore.examples")
        .comment("Answers every request with the message and the instance that served it.")
        .method(echo)
        .build();
    Builder::new().build_transport(false).compile(&[service]);
}
