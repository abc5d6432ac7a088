//! The command line of the `nh-sim` binary (not part of the library): [`args`] reads the flags,
//! [`commands`] runs each subcommand with them.

pub(crate) mod args;
pub(crate) mod commands;
