//! The pieces the examples share: a tiny HTTP echo provider, a gateway that forwards
//! each request to a live instance that can serve it (kvstore-discovery's `Upstreams`:
//! outlier ejection, retries on another instance), a steady request load, and (feature
//! `grpc`) a gRPC echo service. Real HTTP and gRPC (axum, hyper, tonic) on loopback; the
//! examples in `examples/` wire them to a kvstore.

pub mod client;
pub mod echo;
pub mod gateway;
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod load;

/// The response header naming the instance that served a request.
pub const SERVED_BY: &str = "x-served-by";
