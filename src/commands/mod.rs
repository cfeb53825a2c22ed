//! One module per subcommand.

pub mod check;
pub mod client;
pub mod completions;
pub mod init;
pub mod presets;
pub mod route;
pub mod route_test;
pub mod run;
pub mod secret;
pub mod serve;
pub mod table;
