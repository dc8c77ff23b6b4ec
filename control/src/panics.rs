//! Panics as the daemon's log lines, and panics a caller expects kept quiet.
//!
//! In: panics anywhere in the process, once [`install`] ran. Out: for the
//! daemon (`log`), one `error` event per panic (thread, place, message, and a
//! backtrace when `RUST_BACKTRACE` asks for one) in the log's own format, JSON
//! by default, instead of the default hook's lines of plain text among JSON
//! lines; for the offline tools, the default hook's text as before. Either
//! way a panic inside [`expected`] (a parser known to panic on some input,
//! whose caller turns the panic into an error of its own) is only a `debug`
//! event.

use std::cell::Cell;
use std::panic::{PanicHookInfo, UnwindSafe};

thread_local! {
    /// Set while this thread runs [`expected`].
    static EXPECTED: Cell<bool> = const { Cell::new(false) };
}

/// `f`, with a panic caught and returned as `Err`, as
/// [`std::panic::catch_unwind`] does, but not reported as one (see the module).
pub fn expected<R>(f: impl FnOnce() -> R + UnwindSafe) -> std::thread::Result<R> {
    let outer = EXPECTED.with(|e| e.replace(true));
    let result = std::panic::catch_unwind(f);
    EXPECTED.with(|e| e.set(outer));
    result
}

/// Replaces the panic hook of the process: panics become log events when
/// `log` is true (the daemon, once its subscriber is set) and a subscriber
/// is there to take them, and go to the previous hook otherwise; panics
/// inside [`expected`] are a `debug` event in every case.
pub fn install(log: bool) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        thread_local! {
            /// A panic while logging a panic (in the subscriber itself) goes
            /// to the previous hook instead.
            static IN_HOOK: Cell<bool> = const { Cell::new(false) };
        }
        if IN_HOOK.with(|h| h.replace(true)) {
            return previous(info);
        }
        // Before the daemon's subscriber is set (or on a thread without one),
        // a log event would be lost: the previous hook's text instead.
        let logged =
            log && !tracing::dispatcher::get_default(|d| d.is::<tracing::subscriber::NoSubscriber>());
        if EXPECTED.with(Cell::get) {
            tracing::debug!(panic = message(info), place = place(info), "a panic the caller expects");
        } else if logged {
            let thread = std::thread::current();
            let backtrace = std::backtrace::Backtrace::capture();
            let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
                .then(|| backtrace.to_string());
            tracing::error!(
                panic = message(info),
                place = place(info),
                thread = thread.name().unwrap_or("unnamed"),
                backtrace,
                "panic (a bug: please report it with this line)"
            );
        } else {
            previous(info);
        }
        IN_HOOK.with(|h| h.set(false));
    }));
}

fn message<'a>(info: &'a PanicHookInfo<'_>) -> &'a str {
    crate::daemon::panic_message(info.payload())
}

fn place(info: &PanicHookInfo<'_>) -> String {
    info.location().map_or_else(|| "unknown".to_string(), ToString::to_string)
}
