//! `autoresearch`: the research CLI. See `autoresearch --help` and runner/README.md.

mod bench;
mod cli;
mod config;
mod curve;
mod db;
mod detect;
mod errors;
mod exec;
mod executor;
mod git;
mod guard;
mod keep;
mod layout;
mod process;
mod pidfile;
mod progress;
mod proposer;
mod report;
mod results;
mod runloop;
mod train;
mod tree;
mod tree_cmd;
mod watch;
mod worker;

fn main() {
    std::process::exit(cli::main());
}
