//! Leaf HTTP plumbing shared by every phase: body types (counted, limited, logged), the one
//! error type with its table of codes, header lists, and the per-request deadlines.

pub mod body;
pub mod deadline;
pub mod error;
pub mod headers;

/// An error and its causes on one line, e.g. `error sending request: connection refused`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}
