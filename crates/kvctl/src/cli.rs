//! The command line, as clap derive types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

/// kvctl: keys, watches, locks, leases and service records on etcd or Redis, with the
/// same semantics as every kvstore backend.
#[derive(Parser, Debug)]
#[command(name = "kvctl", version, after_help = crate::exit::HELP)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The store kvctl talks to unless told otherwise: etcd on this machine, as etcdctl.
pub(crate) const DEFAULT_STORE: &str = "etcd://127.0.0.1:2379";

/// Options every command takes.
#[derive(Args)]
pub(crate) struct Global {
    /// Store URL: etcd://[user:password@]host:port[,host:port...][/namespace],
    /// redis[s]://[user:password@]host:port[/db], redis+cluster://h1:p1,h2:p2,
    /// redis+sentinel://h:p/master or zookeeper://h1:2181[,h2:2181][/namespace]; by
    /// default etcd on this machine, as etcdctl. memory:// is refused: each kvctl command is its own process, so its keys
    /// would be lost when it exits.
    // The env value is hidden in --help: it may hold a password.
    #[arg(
        long,
        env = "KVSTORE_URL",
        global = true,
        default_value = DEFAULT_STORE,
        hide_env_values = true
    )]
    pub store: String,
    /// Root of the keys (overrides the URL's namespace).
    #[arg(long, global = true)]
    pub namespace: Option<String>,
    /// Seconds allowed to connect and for each request.
    #[arg(long, global = true, default_value_t = 5.0)]
    pub timeout: f64,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Username (etcd authentication, Redis ACL); needs --password.
    // Not `requires = "password"`: clap then refuses a password from the environment
    // with a global --user, so kvctl checks the pair itself (main::check_arguments).
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// Password for --user. Never printed.
    #[arg(long, global = true, env = "KVSTORE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// PEM CA certificate to trust for TLS (etcd over https, rediss://).
    #[arg(long, global = true)]
    pub cacert: Option<PathBuf>,
}

/// Neither the password nor the URL's password is shown.
impl std::fmt::Debug for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Global")
            .field("store", &kvstore::redact_url(&self.store))
            .field("namespace", &self.namespace)
            .field("timeout", &self.timeout)
            .field("output", &self.output)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("cacert", &self.cacert)
            .finish()
    }
}

/// What to do.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Print a key's value.
    Get {
        /// The key.
        key: String,
    },
    /// Write a value (from the argument, --file, or standard input).
    Put {
        /// The key.
        key: String,
        /// The value; omit to read --file or standard input.
        #[arg(conflicts_with = "file")]
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Expire the key after this many seconds unless rewritten.
        #[arg(long, conflicts_with = "lease")]
        ttl: Option<f64>,
        /// Attach the key to this lease (hex ID, as `lease grant` prints).
        #[arg(long)]
        lease: Option<String>,
    },
    /// Delete a key (succeeds if it is already absent).
    Del {
        /// The key.
        key: String,
    },
    /// List the keys below a prefix, recursively.
    Ls {
        /// The prefix; empty for everything.
        #[arg(default_value = "")]
        prefix: String,
        /// Print values too.
        #[arg(long)]
        values: bool,
    },
    /// Delete every key below a prefix, at one revision.
    Rm {
        /// Required: say you mean the whole tree.
        #[arg(short = 'r', long = "recursive", required = true)]
        recursive: bool,
        /// The prefix.
        prefix: String,
    },
    /// Compare-and-swap: write only if the key is still at --revision, or absent with
    /// --create.
    Cas {
        /// The key.
        key: String,
        /// The new value.
        value: String,
        /// The revision the key must still have.
        #[arg(long, required_unless_present = "create", conflicts_with = "create")]
        revision: Option<u64>,
        /// Create the key only if it does not exist.
        #[arg(long)]
        create: bool,
    },
    /// Print changes as they happen, until interrupted.
    Watch {
        /// The key (or, with --prefix, the prefix).
        key: String,
        /// Watch every key below KEY.
        #[arg(long)]
        prefix: bool,
    },
    /// Run a command while holding a lock; exits with the command's status.
    Lock {
        /// The lock's key.
        key: String,
        /// Lease TTL in seconds: a crashed holder is replaced after this long.
        #[arg(long, default_value_t = 15.0)]
        ttl: f64,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run a command while leading an election; exits with the command's status.
    Elect {
        /// The election's name.
        name: String,
        /// This candidate's value, visible to observers while it leads.
        value: String,
        /// Lease TTL in seconds: a crashed leader is replaced after this long.
        #[arg(long, default_value_t = 15.0)]
        ttl: f64,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Apply a transaction read from standard input or --file, in etcdctl's text form:
    /// comparisons, a blank line, operations if they all hold, a blank line, operations
    /// otherwise. Comparisons: value|mod|create|lease("KEY") =|!=|>|< "OPERAND";
    /// operations: put KEY VALUE, del KEY, get KEY.
    Txn {
        /// Read the transaction from this file instead of standard input.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Leases.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Service records (kvstore-discovery).
    #[command(subcommand)]
    Svc(ServiceCommand),
}

/// Lease commands.
#[derive(Subcommand, Debug)]
pub(crate) enum LeaseCommand {
    /// Grant a lease of TTL seconds and print its ID (it expires unless kept alive).
    Grant {
        /// TTL in seconds.
        ttl: f64,
    },
    /// Revoke a lease: its keys are deleted.
    Revoke {
        /// The lease ID (hex).
        id: String,
    },
    /// Keep a lease alive until interrupted.
    KeepAlive {
        /// The lease ID (hex).
        id: String,
    },
}

/// Service commands.
#[derive(Subcommand, Debug)]
pub(crate) enum ServiceCommand {
    /// List services with at least one instance.
    Ls,
    /// Show a service's instances as a table.
    Get {
        /// The service.
        service: String,
    },
    /// Print instance changes as they happen, until interrupted.
    Watch {
        /// The service.
        service: String,
    },
    /// Register an instance and keep it registered until interrupted, then deregister.
    Register {
        /// The service.
        service: String,
        /// Its address, host:port.
        address: String,
        /// Instance ID (default: service-port).
        #[arg(long)]
        id: Option<String>,
        /// Lease TTL in seconds.
        #[arg(long, default_value_t = 10.0)]
        ttl: f64,
    },
}
