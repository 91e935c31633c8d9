//! The events of a build's log stream (`GET /v1/builds/{id}/logs`, server-
//! sent events named in [`bakery_protocol::api::event`]).

use bakery_protocol::api::{event, BuildStatus, LogEvent};

/// One event of a build's log stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A log line; its `seq` is the stream's event id.
    Log(LogEvent),
    /// The build's status, whenever a task or the build changes state.
    Status(BuildStatus),
    /// The final status; the stream ends after it.
    End(BuildStatus),
    /// Every event received so far has been handed over and the next has
    /// not arrived yet: a consumer that buffers its output flushes here, so
    /// a chatty build costs a write per network read, not per line, and a
    /// quiet one still shows its last line at once. Never parsed from the
    /// stream.
    Idle,
}

impl Event {
    /// Reads an SSE event. `Ok(None)`: a name this client does not know
    /// (a newer controller's), skipped rather than fatal.
    pub fn parse(name: &str, data: &str) -> Result<Option<Event>, serde_json::Error> {
        Ok(Some(match name {
            event::LOG => Event::Log(serde_json::from_str(data)?),
            event::STATUS => Event::Status(serde_json::from_str(data)?),
            event::END => Event::End(serde_json::from_str(data)?),
            _ => return Ok(None),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_events_are_skipped_and_bad_data_is_an_error() {
        assert_eq!(Event::parse("heartbeat", "{}").unwrap(), None);
        assert!(Event::parse(event::LOG, "not json").is_err());
        let line = r#"{"seq":3,"task":"b-amd64","arch":"amd64","line":"hi","ms":1}"#;
        match Event::parse(event::LOG, line) {
            Ok(Some(Event::Log(l))) => assert_eq!(l.seq, 3),
            other => panic!("{other:?}"),
        }
    }
}
