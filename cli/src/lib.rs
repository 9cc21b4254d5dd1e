//! The `fleet` tool's code: the cluster commands ([`cli`]: `fleet start`,
//! `status`, `stop`, `job`, `list`, `timeline`) and `fleet microbenchmark`
//! ([`bench`](mod@bench)).
//!
//! It is a package of its own, `fleet-cli`, so that a program that depends
//! on the `fleet` library links only what drivers and workers need: clap,
//! rayon and this code are compiled only for the `fleet` binary. What it
//! needs from the runtime's insides it takes from [`fleet::daemon`], the
//! library's deliberately public API for this tool.
//!
//! This is a library target only so that `src/main.rs` (argument parsing)
//! stays thin and the items here are documented; it is not meant to be a
//! dependency of user programs.

pub mod bench;
pub mod cli;
