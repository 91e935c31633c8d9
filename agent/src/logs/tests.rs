//! The sink's own rules: the agent's paths named, never shown.

use super::*;

/// buildah names the context by the agent's own path; the user reads
/// `<context>`, and never the machine's temporary directories.
#[test]
fn the_agents_own_paths_are_named_not_shown() {
    let (log, mut lines) = LogSink::capture();
    log.set_paths(
        std::path::Path::new("/tmp/data/work/b1-amd64/context"),
        std::path::Path::new("/tmp/data/work/b1-amd64"),
    );
    log.line(r#"error building at STEP "COPY app.env /": checking on sources under "/tmp/data/work/b1-amd64/context": copier: stat: "/app.env": no such file or directory"#);
    log.line("storage /tmp/data/work/b1-amd64/storage/overlay is full");
    log.line("named: /tmp/data/work/b1-amd64/contexts/0/x");
    log.line("no path here");
    assert_eq!(
        lines.try_recv().unwrap(),
        r#"error building at STEP "COPY app.env /": checking on sources under "<context>": copier: stat: "/app.env": no such file or directory"#
    );
    assert_eq!(
        lines.try_recv().unwrap(),
        "storage <agent work dir>/storage/overlay is full"
    );
    assert_eq!(
        lines.try_recv().unwrap(),
        "named: <agent work dir>/contexts/0/x",
        "a named context is not taken for the context"
    );
    assert_eq!(lines.try_recv().unwrap(), "no path here");
}
