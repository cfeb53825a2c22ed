//! Leaf HTTP plumbing shared by every phase: body types (counted, limited, logged), the one
//! error type with its table of codes, and header lists.

pub mod body;
pub mod error;
pub mod headers;
