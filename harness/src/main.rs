//! `harness`: run one experiment and print the reference summary. See `harness --help`.

use clap::Parser;

fn main() {
    let started = std::time::Instant::now();
    let cli = harness::cli::Cli::parse();
    std::process::exit(harness::run::run(&cli, started));
}
