//! `harness`: run one experiment and print the reference summary. See `harness --help`.

use clap::Parser;

fn main() {
    let started = std::time::Instant::now();
    let cli = harness::cli::Cli::parse();
    if cli.list_devices {
        println!("{}", serde_json::to_string_pretty(&harness::inventory::inventory()).unwrap_or_default());
        return;
    }
    std::process::exit(harness::run::run(&cli, started));
}
