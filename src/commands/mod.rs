//! One module per subcommand.

pub mod check;
pub mod completions;
pub mod init;
pub mod route;
pub mod secret;
pub mod serve;
pub mod table;
