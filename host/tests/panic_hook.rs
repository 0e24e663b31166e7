//! PID 1's panic hook (its own test binary: the hook is process-wide). A panic in a helper
//! thread (the update agent, the enter server) must not power off a healthy machine: only the
//! main thread's panic is fatal.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

static FATAL_CALLS: AtomicUsize = AtomicUsize::new(0);
static LAST: Mutex<String> = Mutex::new(String::new());

fn record_fatal(message: &str) {
    FATAL_CALLS.fetch_add(1, Ordering::SeqCst);
    *LAST.lock().unwrap() = message.to_string();
}

#[test]
fn only_the_main_threads_panic_is_fatal() {
    // This test's thread plays planet-init's main thread.
    planet_host::supervise::install_panic_hook(record_fatal);

    let helper = std::thread::Builder::new()
        .name("update".into())
        .spawn(|| -> u32 { panic!("attempt to add with overflow") })
        .unwrap();
    assert!(helper.join().is_err(), "the helper thread ends");
    assert_eq!(FATAL_CALLS.load(Ordering::SeqCst), 0, "a helper's panic must not reach fatal()");

    // The main thread still works, and its own panic is fatal.
    let r = std::panic::catch_unwind(|| panic!("main broke"));
    assert!(r.is_err());
    assert_eq!(FATAL_CALLS.load(Ordering::SeqCst), 1);
    assert!(LAST.lock().unwrap().contains("main broke"), "{}", LAST.lock().unwrap());
}
