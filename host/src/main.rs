//! The planet-init binary. `no_main`: std's startup would abort when fds 0-2 are closed and
//! there is no /dev/null to reopen them on — exactly the state of an initramfs without a
//! /dev/console node — so planet-init sets up its console itself first.
#![no_main]

use planet_host::supervise::StopReason;
use planet_host::{boot, console, container_kernel, event, sys, update, VERSION};

/// Gives PID 1 the console on fds 0-2 if the kernel could not (no /dev/console in the cpio).
fn ensure_console() {
    if sys::fd::is_open(1) {
        return;
    }
    let _ = std::fs::create_dir_all("/dev");
    let dev = std::path::Path::new("/dev");
    if !sys::is_mountpoint(dev) {
        let _ = sys::mount(Some("devtmpfs"), dev, Some("devtmpfs"), libc::MS_NOSUID, Some("mode=0755"));
    }
    sys::fd::console_onto_stdio(c"/dev/console");
}

/// Prints the error chain and powers off after a short delay (tests fail fast, operators can
/// read the line on the console). A new release on trial reboots instead, so the boot counter
/// runs down and the firmware falls back to the previous release.
fn fatal(message: &str) -> ! {
    event!("fatal", error = message);
    std::thread::sleep(std::time::Duration::from_secs(3));
    if update::on_trial() {
        restart()
    }
    halt()
}

/// Stops what is left, unmounts, and reboots.
fn restart() -> ! {
    boot::shutdown(&boot::BootEnv::system());
    console::emit("reboot", &[]);
    sys::reboot()
}

/// Stops what is left, unmounts, and powers off.
fn halt() -> ! {
    boot::shutdown(&boot::BootEnv::system());
    console::emit("power-off", &[]);
    sys::power_off()
}

// `#[no_mangle]` counts as unsafe code: this is the C `main` symbol itself, nothing else has it.
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // planet-init started by itself to run a command in the Planet container (`planet-image
    // enter`, health checks; see enter::exec): not PID 1, no console events.
    if std::env::args_os().nth(1).is_some_and(|a| a == planet_host::enter::HELPER_FLAG) {
        use std::os::unix::ffi::OsStringExt;
        let args: Vec<Vec<u8>> = std::env::args_os().map(|a| a.into_vec()).collect();
        return planet_host::enter::helper_main(&args);
    }
    // The kernel runs planet-init as its module helper (`/init -q -- NAME`) when the container
    // asks for a module: see container_kernel. No console, no PID-1 duties in that role.
    if !sys::is_pid1() {
        let args: Vec<String> = std::env::args().collect();
        if let Some(name) = container_kernel::is_modprobe_call(&args) {
            return container_kernel::modprobe_main(name, std::path::Path::new("/lib/modules"));
        }
    }
    ensure_console();
    event!("started", version = VERSION);
    if !sys::is_pid1() {
        event!("fatal", error = "planet-init must run as PID 1 (it mounts, partitions and powers off the machine)");
        return 2;
    }
    // Only the main thread's panic is fatal; a helper thread's is logged and stops that thread.
    planet_host::supervise::install_panic_hook(|message| fatal(message));
    match boot::run(&boot::BootEnv::system()) {
        Ok(StopReason::Reboot(_)) => restart(),
        Ok(_) => halt(),
        Err(e) => fatal(&format!("{e:#}")),
    }
}
