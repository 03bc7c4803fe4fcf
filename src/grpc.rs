//! A gRPC echo service for the gRPC examples (feature `grpc`): `kvstore.examples.Echo/Echo`
//! answers every request with its message and the id of the instance that served it.
//! The messages are prost structs written here; the client and server code is generated
//! by `build.rs` (tonic-build's manual service definition, no protoc).

use tokio::net::TcpListener;
use tokio::sync::oneshot;
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

#[allow(missing_docs, unreachable_pub, clippy::all)]
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

/// A running gRPC echo server with its `grpc.health.v1` service.
#[derive(Debug)]
pub struct GrpcServer {
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    stop: Option<oneshot::Sender<()>>,
    health: tonic_health::server::HealthReporter,
}

impl GrpcServer {
    /// Report `NOT_SERVING` on `grpc.health.v1` (for the echo service and the server
    /// as a whole), as a draining server does.
    pub async fn set_not_serving(&self) {
        self.health
            .set_not_serving::<EchoServer<EchoService>>()
            .await;
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    }

    /// Stop accepting, finish the calls in flight, and return (tonic's graceful
    /// shutdown).
    ///
    /// # Errors
    /// The server's transport error, if it failed.
    pub async fn shutdown(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(_) => Ok(()),
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve the echo service as instance `id` on `listener`, with `grpc.health.v1`
/// reporting `SERVING`, until [`GrpcServer::shutdown`] (or the process dies).
pub async fn serve(listener: TcpListener, id: String) -> GrpcServer {
    let incoming = TcpIncoming::from(listener);
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<EchoServer<EchoService>>().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(EchoServer::new(EchoService { id }))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    GrpcServer {
        task,
        stop: Some(stop),
        health,
    }
}
