//! The daemon's panic hook (`control::panics`): a panic is one `error` event
//! of the daemon's log, JSON like every other line, naming the message, the
//! place and the thread; a panic the caller expects (`panics::expected`) is
//! only a `debug` event; without a subscriber the default hook's text stays.

use std::io::Write;
use std::sync::{Arc, Mutex, Once};

/// A log written to memory, in the daemon's JSON format, at `level`.
fn log_to_memory(level: &str) -> (impl tracing::Subscriber + Send + Sync, Arc<Mutex<Vec<u8>>>) {
    #[derive(Clone)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(Mutex::new(Vec::new()));
    let writer = Buffer(buf.clone());
    let sub = tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(move || writer.clone())
        .finish();
    (sub, buf)
}

fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| control::panics::install(true));
}

/// The log's lines, parsed.
fn read(buf: &Mutex<Vec<u8>>) -> Vec<serde_json::Value> {
    let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[test]
fn a_panic_is_one_json_error_line_with_message_place_and_thread() {
    install();
    let (sub, buf) = log_to_memory("info");
    let caught = std::thread::Builder::new()
        .name("pcl-worker-7".into())
        .spawn(move || {
            tracing::subscriber::with_default(sub, || {
                std::panic::catch_unwind(|| panic!("table slot {} gone", 3))
            })
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(caught.is_err());
    let lines = read(&buf);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["level"], "ERROR", "{l}");
    assert_eq!(l["fields"]["panic"], "table slot 3 gone", "{l}");
    assert_eq!(l["fields"]["thread"], "pcl-worker-7", "{l}");
    let place = l["fields"]["place"].as_str().unwrap();
    assert!(place.starts_with("control/tests/panics.rs:"), "{l}");
}

#[test]
fn an_expected_panic_is_only_a_debug_line() {
    install();
    let (sub, buf) = log_to_memory("debug");
    let caught = tracing::subscriber::with_default(sub, || control::panics::expected(|| panic!("bad input")));
    assert!(caught.is_err());
    let lines = read(&buf);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["level"], "DEBUG", "{lines:?}");
    assert_eq!(lines[0]["fields"]["panic"], "bad input", "{lines:?}");
    // Nested: the outer scope stays quiet after the inner one ends.
    let (sub, buf) = log_to_memory("info");
    let caught = tracing::subscriber::with_default(sub, || {
        control::panics::expected(|| {
            let _ = control::panics::expected(|| panic!("inner"));
            panic!("outer")
        })
    });
    assert!(caught.is_err());
    let nested = read(&buf);
    assert!(nested.is_empty(), "{nested:?}");
}
