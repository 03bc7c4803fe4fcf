//! # kvstore-testkit: real servers and faults for kvstore's tests
//!
//! The backends' tests talk to real servers; this crate starts them, throwaway, on free
//! loopback ports, and breaks them on command. It is test support only: the contract
//! tests live in `kvstore-testsuite`, which needs none of this.
//!
//! - [`server`]: a process spawner and etcd (one server or a 3-member cluster) and Redis,
//!   each killed, restarted, paused (SIGSTOP) and resumed on command; `etcdctl` and
//!   `redis-cli` runners; one shared server per test binary.
//! - [`zookeeper`]: ZooKeeper standalone servers and 3-member ensembles.
//! - [`redis_topology`]: Redis Cluster and Sentinel topologies.
//! - [`proxy`]: a TCP proxy that resets, refuses or blackholes connections.
//!
//! Each server says where it listens the same way: `address()` is `host:port`.
//!
//! ```no_run
//! # fn main() -> Result<(), kvstore_testkit::server::ServerError> {
//! use kvstore_testkit::proxy::TcpProxy;
//! use kvstore_testkit::server::EtcdServer;
//!
//! let etcd = EtcdServer::start()?;
//! let proxy = TcpProxy::start(etcd.address().parse().expect("host:port"))?;
//! let url = format!("etcd://{}/tests", proxy.address()); // through the proxy
//! proxy.blackhole(); // the network goes silent
//! # let _ = url;
//! # Ok(())
//! # }
//! ```

pub mod proxy;
pub mod redis_topology;
pub mod server;
pub mod zookeeper;

/// A fresh namespace for one test: `kvstore-test/<random>`.
pub fn unique_namespace() -> String {
    format!("kvstore-test/{:016x}", rand::random::<u64>())
}
