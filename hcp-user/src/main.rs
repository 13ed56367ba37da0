//! The `hcp` command line: parses arguments and calls the library.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hcp",
    version,
    about = "Copy-on-write snapshots of live block devices, with their cost measured by eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print hcp's version and the running kernel's.
    Version,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
            println!("hcp {} (kernel {})", env!("CARGO_PKG_VERSION"), kernel.trim());
        }
    }
}
