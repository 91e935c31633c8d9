//! An error and its causes on one line.
//!
//! Transport and SDK errors say little at the top ("error sending
//! request", "service error") and the cause ("Connection refused", the
//! service's message) one or two sources down. The client, the
//! controller's index writer and its ECS platform all report such errors
//! in one line a user reads: this is that line.

/// `e`, then each cause not already in the text, joined by `: `.
pub fn flatten(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Top(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn each_cause_once() {
        let e = Top(Middle(std::io::Error::other("Connection refused")));
        assert_eq!(
            super::flatten(&e),
            "error sending request: client error (Connect): Connection refused"
        );
        let repeated = Middle(std::io::Error::other("Connect"));
        assert_eq!(super::flatten(&repeated), "client error (Connect)");
    }
}
