//! The cost of following a log, counted in bytes allocated per line (a
//! count, not a time: the same on a busy machine). A finished build's log
//! arrives in large body chunks; a decoder that copies the rest of its
//! buffer for each line it reads (eventsource-stream 0.2.3 does) allocates
//! a chunk's worth per line (a megabyte, measured), where reading in place allocates
//! the decoded event's own strings, about a hundred bytes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bakery_client::{Controller, Event};

/// Counts the bytes allocated while `COUNTING` is set, on every thread.
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATED: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to the system allocator unchanged, with the
// caller's own arguments; counting touches only an atomic.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from System with `layout` (alloc/realloc above).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATED.fetch_add(new_size as u64, Ordering::Relaxed);
        }
        // SAFETY: as for dealloc; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const LINES: u64 = 20_000;

/// A finished build's whole log as the controller sends it.
fn body() -> String {
    use std::fmt::Write;
    let mut body = String::new();
    for seq in 1..=LINES {
        let _ = write!(
            body,
            "id: {seq}\nevent: log\ndata: {{\"seq\":{seq},\"task\":\"t-amd64\",\"arch\":\"amd64\",\"line\":\"load {seq:0>60}\",\"ms\":1}}\n\n"
        );
    }
    let end = serde_json::json!({"id": "b", "service": "app", "state": "succeeded",
        "destination": null, "index_digest": null, "error": null, "created_ms": 1,
        "finished_ms": 2, "tasks": []});
    let _ = write!(body, "event: end\ndata: {end}\n\n");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_log_allocates_per_line_what_the_line_holds() {
    use axum::{routing::get, Router};
    let body = body();
    let app = Router::new().route(
        "/v1/builds/b/logs",
        get(move || async move { ([("content-type", "text/event-stream")], body) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let controller = Controller::new(&base, None);
    let mut lines = 0u64;
    COUNTING.store(true, Ordering::Relaxed);
    let status = controller
        .follow("b", |event| {
            if let Event::Log(line) = event {
                assert_eq!(line.seq, lines + 1);
                lines += 1;
            }
        })
        .await;
    COUNTING.store(false, Ordering::Relaxed);
    let status = status.unwrap();
    assert_eq!(status.id, "b");
    assert_eq!(lines, LINES, "every line delivered");
    let per_line = ALLOCATED.load(Ordering::Relaxed) / LINES;
    eprintln!("following {LINES} lines: {per_line} bytes allocated per line");
    // Measured: ~800 bytes, of which the event's own strings (the task id
    // and the line) are ~80 and the HTTP client's read buffers the rest.
    // A copy of the rest of a chunk per line: ~1 MB (eventsource-stream).
    assert!(per_line > 0, "the allocator counted");
    assert!(per_line < 8 * 1024, "{per_line} bytes allocated per line");
}
