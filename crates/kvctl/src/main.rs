//! The `kvctl` binary: see the library's documentation and `kvctl --help`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    kvctl::main().await
}
