//! The pieces the examples share: a tiny HTTP echo provider and a gateway that routes
//! to the live instances of a service. Real HTTP (axum servers, a hyper client) on
//! loopback; the examples in `examples/` wire them to a kvstore.

#![warn(missing_docs)]

pub mod client;
pub mod echo;
pub mod gateway;

/// The response header naming the instance that served a request.
pub const SERVED_BY: &str = "x-served-by";
