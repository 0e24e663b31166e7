//! `planet-image enter` against a real boot (QEMU + OVMF, TCG when KVM does not work): the
//! systemd fixture runs as the dev machine's container, and commands run inside it over the
//! virtio-serial channel — exit statuses, separate stdout and stderr, stdin, the container's
//! pid namespace and hostname, a terminal, one session at a time, and a fresh session after
//! one whose client was killed.

mod common;

use common::*;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(300);

fn enter(vm: &str, args: &[&str]) -> Command {
    let mut c = planet_image();
    c.args(["enter", vm, "--"]).args(args);
    c
}

/// Runs `enter VM -- ARGS` with stdin from /dev/null; fails the test when it takes over 60 s.
fn run(vm: &str, args: &[&str]) -> Output {
    run_with(enter(vm, args).stdin(Stdio::null()))
}

fn run_with(cmd: &mut Command) -> Output {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting planet-image enter");
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        // The enter process this test started (a no-op once it is reaped and its pid unused;
        // the test has failed by then anyway).
        let _ = planet_image::util::sys::kill(pid as i32, libc::SIGKILL);
    });
    let out = child.wait_with_output().expect("waiting for planet-image enter");
    drop(watchdog);
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn commands_run_inside_the_systemd_container() {
    let s = Scratch::new("enter");
    let image = s.path("systemd.qcow2");
    build("qcow2", &fixture("systemd.tar"), &image, &[]);
    // A name of this test process's own: parallel test runs do not meet.
    let vm = format!("enter-test-{}", std::process::id());
    let mut guest = Guest::start(
        &image,
        &s,
        &["--snapshot", "--name", &vm, "--cmdline", "planet.role=dev planet.hostname=enter-1"],
    );
    let console = guest.wait_for("planet-systemd: reached multi-user.target", BOOT);
    assert!(console.contains("planet-init: enter ready port=/dev/vport"), "{console}");

    // stdout, the container's hostname.
    let out = run(&vm, &["cat", "/etc/hostname"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "enter-1\n");
    let out = run(&vm, &["hostname"]);
    assert_eq!(text(&out.stdout), "enter-1\n", "the container's uts namespace");

    // Exit statuses and separate streams.
    assert_eq!(run(&vm, &["false"]).status.code(), Some(1));
    let out = run(&vm, &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!((text(&out.stdout).as_str(), text(&out.stderr).as_str()), ("out\n", "err\n"));
    let out = run(&vm, &["no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(text(&out.stderr).contains("no-such-command: command not found in the container"), "{out:?}");

    // The container's pid namespace: systemd is PID 1, and few processes are visible.
    let out = run(&vm, &["cat", "/proc/1/comm"]);
    assert_eq!(text(&out.stdout), "systemd\n", "{}", text(&out.stderr));
    let out = run(&vm, &["sh", "-c", "ls /proc | grep -c '^[0-9]'; echo $$; pwd; echo $container $HOME"]);
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let procs: u32 = lines[0].parse().unwrap();
    let own: u32 = lines[1].parse().unwrap();
    assert!(procs < 100 && own < 1000, "not the container's pid namespace: {lines:?}");
    assert_eq!(&lines[2..], ["/root", "planet /root"]);

    // stdin is passed, and its end.
    let mut child = enter(&vm, &["sh", "-c", "cat; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!((out.status.code(), text(&out.stdout).as_str()), (Some(0), "hi\ndone\n"), "{}", text(&out.stderr));

    // Larger output arrives whole (several frames, flow control on the port).
    let out = run(&vm, &["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x"]);
    assert_eq!(out.stdout.len(), 3_000_000);
    assert!(out.stdout.iter().all(|b| *b == b'x'));

    // One session at a time: a second one is refused while the first runs.
    let mut first = enter(&vm, &["sleep", "4"]).stdin(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let busy = run(&vm, &["true"]);
    assert_eq!(busy.status.code(), Some(255));
    assert!(text(&busy.stderr).contains("another `planet-image enter` session is using VM"), "{busy:?}");
    assert_eq!(first.wait().unwrap().code(), Some(0));

    // A client killed mid-session: its command is hung up and the next session works.
    let mut lost = enter(&vm, &["sleep", "600"]).stdin(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    lost.kill().unwrap();
    lost.wait().unwrap();
    let out = run(&vm, &["echo", "next"]);
    assert_eq!((out.status.code(), text(&out.stdout).as_str()), (Some(0), "next\n"), "{}", text(&out.stderr));
    let out = run(&vm, &["sh", "-c", "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done"]);
    assert!(!text(&out.stdout).contains("sleep 600"), "the abandoned command still runs:\n{}", text(&out.stdout));

    // A terminal: the command gets a pty of the container's devpts as its controlling terminal.
    if Command::new("script").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let line = format!("{} enter {vm} -- sh -c 'tty; stty size; exit 3'", bin().display());
        let out = run_with(
            Command::new("script")
                .args(["-qec", &format!("stty rows 33 cols 101; {line}"), "/dev/null"])
                .env("PLANET_IMAGE_CACHE", cache_dir())
                .stdin(Stdio::null()),
        );
        let t = text(&out.stdout);
        assert!(t.contains("/dev/pts/") && t.contains("33 101"), "{t:?} {}", text(&out.stderr));
        assert_eq!(out.status.code(), Some(3), "{t:?}");
    }

    // A VM that is not running is named, with the ones that are.
    let out = run("no-such-vm", &["true"]);
    assert_eq!(out.status.code(), Some(255));
    let e = text(&out.stderr);
    assert!(e.contains("VM no-such-vm is not running") && e.contains(&vm), "{e}");
}
