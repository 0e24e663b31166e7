//! `planet-image run`: boots an image in QEMU with UEFI firmware (OVMF from the cache, with a
//! private copy of its variable store) or QEMU's own SeaBIOS (`--firmware bios`), KVM when it
//! really works and TCG otherwise, user networking restricted to the host forwards asked for,
//! the serial console on the terminal or in a log file, and a virtio-serial port on a Unix
//! socket for `planet-image enter` (see [`crate::enter`]: no network port for it).

pub mod net;

use crate::enter::Channel;
use crate::fetch::Cache;
use crate::image_reader::DiskImage;
use crate::util::command::require_tool;
use crate::util::sys;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct RunRequest {
    pub image: PathBuf,
    pub seed: Option<PathBuf>,
    /// (host port, guest port), TCP, bound on 127.0.0.1.
    pub forwards: Vec<(u16, u16)>,
    pub cmdline: Option<String>,
    pub memory_mib: u32,
    pub cpus: u32,
    pub serial_log: Option<PathBuf>,
    pub timeout: Option<Duration>,
    pub monitor: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub accel: Accel,
    pub firmware: Firmware,
    /// How the boot disk is attached.
    pub disk_bus: DiskBus,
    /// Logical and physical block size of the boot disk (4096 for a 4Kn disk).
    pub block_size: Option<u32>,
    /// Writes go to a throw-away overlay instead of the image.
    pub snapshot: bool,
    /// SMBIOS strings, guest-to-host forwards, links to other VMs.
    pub net: net::VmNet,
    /// The VM's name for `planet-image enter` (default: the image's file stem).
    pub name: Option<String>,
    /// Where the enter socket goes instead of the per-user directory.
    pub enter_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM when /dev/kvm can really create a virtual CPU, else TCG.
    Auto,
    Kvm,
    Tcg,
}

/// What the machine boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// OVMF (UEFI) from the package cache: systemd-boot.
    Uefi,
    /// QEMU's default SeaBIOS (legacy BIOS): GRUB from the MBR, for images built with --bios.
    Bios,
}

/// The controller the boot disk hangs off, as on the platforms the images are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    /// virtio-blk (QEMU/KVM default).
    Virtio,
    /// NVMe (EC2 Nitro, modern servers).
    Nvme,
    /// virtio-scsi with a SCSI disk (GCE).
    Scsi,
    /// AHCI with a SATA disk (older servers).
    Ahci,
}

/// A path as a value in QEMU's comma-separated option syntax: a comma in it is doubled, so a
/// file name cannot add options (`x,file=/etc/shadow`).
fn qemu_path(p: &std::path::Path) -> String {
    p.display().to_string().replace(',', ",,")
}

fn add_boot_disk(cmd: &mut Command, req: &RunRequest, image: &DiskImage) {
    let snapshot = if req.snapshot { ",snapshot=on" } else { "" };
    cmd.arg("-drive").arg(format!(
        "if=none,id=disk0,format={},file={}{snapshot}",
        image.format_name(),
        qemu_path(&req.image)
    ));
    let blocks = req.block_size.map(|b| format!(",logical_block_size={b},physical_block_size={b}")).unwrap_or_default();
    let device = match req.disk_bus {
        DiskBus::Virtio => format!("virtio-blk-pci,drive=disk0{blocks}"),
        DiskBus::Nvme => format!("nvme,drive=disk0,serial=planet0{blocks}"),
        DiskBus::Scsi => {
            cmd.args(["-device", "virtio-scsi-pci,id=scsi0"]);
            format!("scsi-hd,drive=disk0,bus=scsi0.0{blocks}")
        }
        DiskBus::Ahci => {
            cmd.args(["-device", "ahci,id=ahci0"]);
            format!("ide-hd,drive=disk0,bus=ahci0.0{blocks}")
        }
    };
    cmd.arg("-device").arg(device);
}

/// Parses `HOST:GUEST` (TCP ports).
pub fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let (h, g) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected HOST:GUEST ports, e.g. 2379:2379"))?;
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("{p:?} is not a TCP port"));
    Ok((port(h)?, port(g)?))
}

/// Whether KVM works here, tried with `firmware` (OVMF's code, or SeaBIOS when `None`):
/// /dev/kvm opens and can create a VM and a vCPU, and QEMU itself runs that firmware
/// under KVM. Nested virtualisation often exposes a device that passes the first checks and then
/// fails on the first MSR QEMU sets, or (seen with kvm-pvm) runs SeaBIOS but stops with an
/// internal error in OVMF's first instructions: only running the firmware itself tells.
pub fn kvm_usable(firmware: Option<&Path>) -> bool {
    kvm_device_works() && qemu_kvm_runs(firmware)
}

/// How many times the probe asks for the guest's status, 100 ms apart: OVMF's failure comes
/// within its first instructions, so two seconds of a running guest are proof enough.
const KVM_PROBE_ASKS: usize = 20;

/// Starts a KVM guest of `firmware` with its monitor on stdin and asks for its status
/// [`KVM_PROBE_ASKS`] times: every answer must be `running`. A guest KVM cannot run stops as
/// `paused (internal-error)`, or QEMU aborts. The answers, not a time waited, decide: they come
/// only once the vCPUs run (a loaded machine can take seconds to get there).
fn qemu_kvm_runs(firmware: Option<&Path>) -> bool {
    use std::io::{Read, Write};
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35,accel=kvm", "-cpu", "host", "-display", "none", "-nodefaults", "-no-user-config"])
        .args(["-m", "128", "-monitor", "stdio", "-serial", "none"]);
    if let Some(code) = firmware {
        cmd.arg("-drive").arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", qemu_path(code)));
    }
    let child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn();
    let Ok(mut child) = child else { return false };
    let Some(mut stdin) = child.stdin.take() else { return false };
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let asker = std::thread::spawn(move || {
        for _ in 0..KVM_PROBE_ASKS {
            if stdin.write_all(b"info status\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = stdin.write_all(b"quit\n");
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() < Duration::from_secs(60) => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let _ = asker.join();
    let answer = reader.join().unwrap_or_default();
    status.is_some_and(|s| s.success()) && probe_answer_says_running(&answer)
}

/// Every `VM status:` answer says `running`, and there is one per question.
fn probe_answer_says_running(answer: &str) -> bool {
    let statuses: Vec<&str> = answer.lines().filter_map(|l| l.split("VM status: ").nth(1)).collect();
    statuses.len() == KVM_PROBE_ASKS && statuses.iter().all(|s| s.trim() == "running")
}

fn kvm_device_works() -> bool {
    use std::os::fd::AsFd;
    let Ok(dev) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") else {
        return false;
    };
    if sys::kvm_api_version(dev.as_fd()).ok() != Some(12) {
        return false;
    }
    let Ok(vm) = sys::kvm_create_vm(dev.as_fd()) else { return false };
    sys::kvm_create_vcpu(vm.as_fd()).is_ok()
}

pub fn run(req: &RunRequest) -> Result<i32> {
    require_tool("qemu-system-x86_64", "qemu-system-x86")?;
    let cache = Cache::new(req.cache_dir.as_deref())?;
    let (code, vars_template) = (cache.ovmf_code(), cache.ovmf_vars());
    if req.firmware == Firmware::Uefi && (!code.is_file() || !vars_template.is_file()) {
        bail!("OVMF firmware is not in the cache {}: run `planet-image fetch` first", cache.dir.display());
    }
    // Refuses a qcow2 naming another file (image_reader::check_self_contained).
    let image = DiskImage::open(&req.image)?;
    // Held until QEMU is gone: names the VM and removes its socket afterwards.
    let channel = Channel::prepare(req.name.as_deref(), req.enter_socket.as_deref(), &req.image)?;
    let scratch = crate::util::tempdir("planet-image-run")?;
    let vars = scratch.path().join("OVMF_VARS.fd");
    if req.firmware == Firmware::Uefi {
        std::fs::copy(&vars_template, &vars).with_context(|| format!("copying {}", vars_template.display()))?;
    }

    let accel = match req.accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
        // OVMF is the harder test even for a SeaBIOS boot: kvm-pvm ran SeaBIOS and then failed
        // in GRUB, as it fails in OVMF's first instructions.
        Accel::Auto if kvm_usable(code.is_file().then_some(code.as_path())) => "kvm",
        Accel::Auto => "tcg",
    };
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        &format!("q35,accel={accel}"),
        "-m",
        &req.memory_mib.to_string(),
        "-smp",
        &req.cpus.to_string(),
    ])
    .args(["-display", "none", "-no-user-config", "-nodefaults"]);
    if req.firmware == Firmware::Uefi {
        cmd.arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", qemu_path(&code)))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", qemu_path(&vars)));
    }
    add_boot_disk(&mut cmd, req, &image);
    if accel == "kvm" {
        cmd.args(["-cpu", "host"]);
    } else {
        cmd.args(["-cpu", "max"]);
    }
    if let Some(seed) = &req.seed {
        if !seed.is_file() {
            bail!("the seed image {} does not exist; make one with `planet-image seed`", seed.display());
        }
        cmd.arg("-drive").arg(format!("if=virtio,format=raw,readonly=on,file={}", qemu_path(seed)));
    }
    let mut netdev = "user,id=net0,restrict=on".to_string();
    for (h, g) in &req.forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
    }
    if !req.net.guestfwd.is_empty() {
        let exe = std::env::current_exe().context("finding planet-image's own path (for --guestfwd's relay)")?;
        netdev.push_str(&req.net.user_netdev_options(&exe));
    }
    cmd.arg("-netdev").arg(netdev).args(["-device", "virtio-net-pci,netdev=net0"]);
    req.net.apply(&mut cmd);
    if let Some(extra) = &req.cmdline {
        // Checked as planet-init will read it, before QEMU starts: `planet.env=` and
        // `planet.join_token=` are refused there, and here they would also sit in QEMU's argv.
        planet_config::CmdlineConfig::parse(extra).map_err(|e| anyhow::anyhow!("--cmdline: {e}"))?;
        // Boot the image's own kernel and initramfs through the firmware, with the entry's
        // options plus `extra`: the ESP itself is not modified.
        let boot = image.default_boot_entry().context("reading the default boot entry from the image's ESP")?;
        let kernel = scratch.path().join("vmlinuz");
        let initrd = scratch.path().join("initramfs.img");
        std::fs::write(&kernel, &boot.vmlinuz)?;
        std::fs::write(&initrd, &boot.initramfs)?;
        cmd.arg("-kernel").arg(&kernel).arg("-initrd").arg(&initrd);
        cmd.arg("-append").arg(format!("{} {}", boot.options, extra.trim()));
    }
    match &req.serial_log {
        Some(log) => {
            cmd.arg("-chardev").arg(format!("file,id=ser0,path={}", qemu_path(log))).args(["-serial", "chardev:ser0"]);
            cmd.stdin(Stdio::null());
        }
        None => {
            cmd.args(["-chardev", "stdio,id=ser0,signal=on", "-serial", "chardev:ser0"]);
        }
    }
    if let Some(m) = &req.monitor {
        cmd.arg("-monitor").arg(format!("unix:{},server=on,wait=off", qemu_path(m)));
    }
    // `planet-image enter`: a virtio-serial port on a private Unix socket, never a network port.
    cmd.args(channel.qemu_args());
    // QEMU's sockets (and files) are then 0600.
    sys::umask_on_exec(&mut cmd, 0o177);
    eprintln!(
        "planet-image: booting {} ({accel}); `{}` opens a shell in it",
        req.image.display(),
        channel.enter_hint()
    );
    forward_termination_signals();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if STOP_SIGNALS.iter().any(|s| sys::caught(*s)) {
            // Asked to stop: end QEMU too, so no guest outlives its `run`.
            // Our own child process, not yet waited for.
            let _ = sys::kill(child.id() as i32, libc::SIGTERM);
            let status = child.wait()?;
            bail!("stopped by a signal; QEMU exited ({status})");
        }
        if let Some(t) = req.timeout {
            if started.elapsed() > t {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the guest did not power off within {} s; QEMU was stopped", t.as_secs());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ok(status.code().unwrap_or(1))
}

/// The signals that stop `run` and its QEMU.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// SIGTERM, SIGINT and SIGHUP to `run` stop its QEMU as well.
fn forward_termination_signals() {
    let _ = sys::catch_signals(&STOP_SIGNALS, true);
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_kvm_probe_wants_every_answer_running() {
        let running = "(qemu) info status\nVM status: running\n".repeat(KVM_PROBE_ASKS);
        assert!(probe_answer_says_running(&running));
        // kvm-pvm under nested virtualisation: OVMF's first instructions stop the guest.
        let stopped = running.replacen("VM status: running", "VM status: paused (internal-error)", 1);
        assert!(!probe_answer_says_running(&stopped));
        // QEMU gone before it answered every question.
        assert!(!probe_answer_says_running("VM status: running\n"));
    }

    use super::*;

    #[test]
    fn commas_in_paths_cannot_add_qemu_options() {
        assert_eq!(qemu_path(std::path::Path::new("/tmp/a,file=/etc/shadow")), "/tmp/a,,file=/etc/shadow");
        assert_eq!(qemu_path(std::path::Path::new("/tmp/plain.qcow2")), "/tmp/plain.qcow2");
    }
}
