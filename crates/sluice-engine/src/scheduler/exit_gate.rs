//! Keeps process exit from tearing llama.cpp down under the engine thread.
//! The run loop holds the gate around every step and around freeing the
//! context; an exit handler closes it for good. The only `unsafe` of the
//! engine is here: registering that handler with the C runtime.

use std::sync::{Mutex, MutexGuard, Once, PoisonError};

/// Held by the engine thread while it is inside llama.cpp. At process exit
/// llama.cpp's static state (ggml's backend registry and buffers) is torn
/// down by exit handlers; an engine thread still decoding then reads freed
/// memory and the process dies with SIGSEGV instead of exiting. So an exit
/// handler takes this gate and never gives it back: exit waits for the step
/// in progress, and the engine thread never enters llama.cpp again.
static EXIT_GATE: Mutex<()> = Mutex::new(());

pub(super) fn exit_gate() -> MutexGuard<'static, ()> {
    EXIT_GATE.lock().unwrap_or_else(PoisonError::into_inner)
}

unsafe extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
}

extern "C" fn close_exit_gate() {
    std::mem::forget(exit_gate());
}

/// Registered once, after the model and context exist: exit handlers run in
/// reverse order of registration, so this one runs before the teardown of
/// any llama.cpp state created while loading.
pub(super) fn close_exit_gate_at_process_exit() {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| {
        // SAFETY: `close_exit_gate` is a plain `extern "C" fn()` that only
        // locks a static mutex; registering it has no other precondition.
        let failed = unsafe { atexit(close_exit_gate) } != 0;
        if failed {
            tracing::warn!("could not register the engine's exit handler");
        }
    });
}
