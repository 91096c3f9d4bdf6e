//! The commands: each turns what a person asked for on the command line (parsed in `cli`) into
//! calls to the loop and the domain below, and prints the answer. Nothing below imports them.

pub mod bench;
pub mod detect;
pub mod finalize;
pub mod results;
pub mod serve;
pub mod train;
pub mod tree;
pub mod watch;
