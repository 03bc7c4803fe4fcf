//! A gRPC echo service for the gRPC examples (feature `grpc`): `kvstore.examples.Echo/Echo`
//! answers every request with its message and the id of the instance that served it.
//! The messages are prost structs written here; the client and server code is generated
//! by `build.rs` (tonic-build's manual service definition, no protoc).

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// What a client sends.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Echoed back.
    #[prost(string, tag = "1")]
    pub message: String,
}

/// What an instance answers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The request's message.
    #[prost(string, tag = "1")]
    pub message: String,
    /// The id of the instance that served the call.
    #[prost(string, tag = "2")]
    pub served_by: String,
}

#[allow(missing_docs, clippy::all)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/kvstore.examples.Echo.rs"));
}

pub use generated::echo_client::EchoClient;
pub use generated::echo_server::{Echo, EchoServer};

/// The service: answers as instance `id`.
#[derive(Clone, Debug)]
pub struct EchoService {
    id: String,
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(EchoReply {
            message: request.into_inner().message,
            served_by: self.id.clone(),
        }))
    }
}

/// Serve the echo service as instance `id` on `listener` until the returned task is
/// aborted (a crash).
pub fn serve(listener: TcpListener, id: String) -> JoinHandle<Result<(), tonic::transport::Error>> {
    let incoming = TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(EchoService { id }))
            .serve_with_incoming(incoming),
    )
}
