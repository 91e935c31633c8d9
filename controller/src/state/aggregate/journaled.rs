//! An [`Aggregate`] to and from what the journal saves of it: its record
//! (request, status, each task's runtime) and, at start-up, the build
//! rebuilt from the record and the lines saved beside it.

use super::{redactor_for, Aggregate, Change, Head, IndexAsks};
use crate::journal::{self, Record, TaskRecord};
use crate::state::log::{Log, StoredLine};
use crate::state::task::{Runtime, Task};

impl Aggregate {
    /// A build as the journal saved it.
    pub(in crate::state) fn restore(saved: journal::Restored, log_limit: u64) -> Self {
        let journal::Restored {
            record,
            tail,
            log_len,
            log_bytes,
            agent_seqs,
        } = saved;
        let Record {
            status,
            request,
            tasks: records,
            cancel_requested,
            acknowledged,
            idempotency_key,
            ..
        } = record;
        let tasks: Vec<Task> = request
            .tasks
            .into_iter()
            .zip(status.tasks)
            .zip(records)
            .enumerate()
            .map(|(i, ((request, status), t))| Task {
                request,
                status,
                runtime: Runtime {
                    token: t.token(),
                    // The chunks carry the newer value when only lines changed.
                    agent_seq: t.agent_seq.max(agent_seqs.get(i).copied().unwrap_or(0)),
                    launched_at: t.launched_ms.map(journal::instant_from_ms),
                    checked_in_at: t.checked_in_ms.map(journal::instant_from_ms),
                    handle: t.handle.map(crate::platform::AgentHandle::new),
                    queued_at: t.queued_ms.map(journal::instant_from_ms),
                    relaunched: t.relaunched,
                    ..Runtime::new(String::new())
                },
            })
            .collect();
        let tail = tail
            .into_iter()
            .map(|e| StoredLine {
                task: tasks.iter().position(|t| t.id() == e.task).unwrap_or(0) as u32,
                line: e.line.into_boxed_str(),
                ms: e.ms,
            })
            .collect();
        let logs = Log::restored(log_len, log_bytes, tail);
        let redactor = redactor_for(&tasks);
        Aggregate {
            id: status.id,
            service: request.service,
            destination: request.destination,
            tags: request.tags,
            asks: IndexAsks {
                provenance: request.provenance,
                index_annotations: request.index_annotations,
                descriptor_annotations: request.descriptor_annotations,
            },
            head: Head {
                state: status.state,
                index_digest: status.index_digest,
                error: status.error,
                created_ms: status.created_ms,
                finished_ms: status.finished_ms,
                created_by: status.created_by,
            },
            tasks,
            logs,
            log_limit,
            cancel_requested,
            cancel_pending: false,
            redactor,
            acknowledged,
            idempotency_key,
            change: Change::None,
        }
    }

    /// What the journal saves of it (its log aside).
    pub(in crate::state) fn record(&self) -> Record {
        Record {
            version: journal::RECORD_VERSION,
            status: self.status(),
            request: self.request(),
            tasks: self
                .tasks
                .iter()
                .map(|t| TaskRecord {
                    token_sha256: t.runtime.token.sha256().to_string(),
                    token: String::new(),
                    agent_seq: t.runtime.agent_seq,
                    handle: t.runtime.handle.as_ref().map(|h| h.as_str().to_string()),
                    launched_ms: t.runtime.launched_at.map(journal::ms_from_instant),
                    checked_in_ms: t.runtime.checked_in_at.map(journal::ms_from_instant),
                    queued_ms: t.runtime.queued_at.map(journal::ms_from_instant),
                    relaunched: t.runtime.relaunched,
                })
                .collect(),
            cancel_requested: self.cancel_requested || self.cancel_pending,
            acknowledged: self.acknowledged,
            idempotency_key: self.idempotency_key.clone(),
        }
    }
}
