//! planet-init on real boots (QEMU + OVMF, TCG when KVM does not work): the demo cluster
//! comes up, the state partition grows, systemd runs as the container's init, a Planet
//! release gets exactly its flags, and ACPI power-off stops everything cleanly.

mod common;

use common::*;

use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(240);

fn demo_image(s: &Scratch, target: &str) -> std::path::PathBuf {
    let image = s.path(&format!("demo.{target}"));
    build(target, &fixture("demo.tar"), &image, &[]);
    image
}

#[test]
fn demo_dev_machine_serves_etcd_and_registers_itself() {
    let s = Scratch::new("demo-dev");
    let image = demo_image(&s, "qcow2");
    let port = free_port();
    let mut guest = Guest::start(
        &image,
        &s,
        &["--snapshot", "--cmdline", "planet.role=dev planet.hostname=demo-1", "--forward", &format!("{port}:2379")],
    );
    guest.wait_for("planet-init: launcher started", BOOT);
    let health =
        poll(Duration::from_secs(120), || http(port, "GET", "/health", "").ok().filter(|b| b.contains("health")))
            .unwrap_or_else(|| panic!("etcd never answered on the forwarded port; console:\n{}", guest.console()));
    assert!(health.contains(r#""health":"true""#), "{health}");
    let nodes = poll(Duration::from_secs(120), || etcd_range(port, "/nodes/").filter(|r| r.contains("\"kvs\"")))
        .unwrap_or_else(|| panic!("no /nodes/ registration; console:\n{}", guest.console()));
    assert!(nodes.contains(&b64("/nodes/demo-1")), "demo-1 is not under /nodes/: {nodes}");
    let console = guest.console();
    assert!(console.contains("planet-init: config role=dev"), "{console}");
}

#[test]
fn state_grows_to_the_end_of_a_larger_disk_and_keeps_its_data() {
    let s = Scratch::new("grow");
    let image = demo_image(&s, "raw");
    let disk = s.path("disk4x.raw");
    std::fs::copy(&image, &disk).unwrap();
    let size = std::fs::metadata(&image).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&disk).unwrap().set_len(size * 4).unwrap();

    // First boot: grow, start etcd, write a key, power off.
    let port = free_port();
    let args = ["--cmdline", "planet.role=dev planet.hostname=grow-1", "--forward"];
    let fwd = format!("{port}:2379");
    {
        let mut guest = Guest::start(&disk, &s, &[&args[..], &[fwd.as_str()]].concat());
        let console = guest.wait_for("planet-init: launcher started", BOOT);
        assert!(console.contains("planet-init: state grown"), "first boot did not grow the state:\n{console}");
        poll(Duration::from_secs(120), || etcd_put(port, "/grow/marker", "kept"))
            .unwrap_or_else(|| panic!("could not write to etcd; console:\n{}", guest.console()));
        guest.monitor("system_powerdown");
        assert!(guest.wait_exit(Duration::from_secs(120)).is_some(), "no power-off:\n{}", guest.console());
    }
    let (ss, parts) = sfdisk(&disk);
    let text = stdout(Command::new("sfdisk").arg("--json").arg(&disk));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let last_lba = v["partitiontable"]["lastlba"].as_u64().unwrap();
    let state = parts.iter().find(|p| p.name == "planet-state").unwrap();
    let state_end = state.start + state.size - 1;
    assert!(
        last_lba - state_end < (1 << 20) / ss,
        "planet-state ends at {state_end}, the disk's last usable LBA is {last_lba}"
    );
    assert!(state.size * ss > size * 2, "planet-state did not take the new space");
    ok(Command::new("sgdisk").arg("-v").arg(&disk));

    // Second boot: no growth, the key is still there.
    {
        let port2 = free_port();
        let fwd2 = format!("{port2}:2379");
        let mut guest = Guest::start(&disk, &s, &[&args[..], &[fwd2.as_str()]].concat());
        let console = guest.wait_for("planet-init: launcher started", BOOT);
        assert!(!console.contains("planet-init: state grown"), "the second boot grew again:\n{console}");
        let found = poll(Duration::from_secs(120), || etcd_range(port2, "/grow/").filter(|r| r.contains("\"kvs\"")))
            .unwrap_or_else(|| panic!("the key written in the first boot is gone; console:\n{}", guest.console()));
        assert!(found.contains(&b64("kept")), "{found}");
        guest.monitor("system_powerdown");
        assert!(guest.wait_exit(Duration::from_secs(120)).is_some(), "no power-off:\n{}", guest.console());
    }
    let state_fs = s.path("state.ext4");
    extract_partition(&disk, "planet-state", &state_fs);
    ok(Command::new("e2fsck").arg("-fn").arg(&state_fs));
    let blocks = stdout(Command::new("dumpe2fs").arg("-h").arg(&state_fs));
    let count: u64 = blocks
        .lines()
        .find_map(|l| l.strip_prefix("Block count:").map(|v| v.trim().parse().unwrap()))
        .expect("dumpe2fs shows a block count");
    assert!(count * 4096 > size * 2, "the ext4 filesystem was not resized ({count} blocks)");
}

#[test]
fn systemd_as_container_init_reaches_its_default_target() {
    let s = Scratch::new("systemd");
    let image = s.path("systemd.qcow2");
    build("qcow2", &fixture("systemd.tar"), &image, &[]);
    let mut guest = Guest::start(&image, &s, &["--snapshot", "--cmdline", "planet.role=dev"]);
    let console = guest.wait_for("Reached target multi-user.target", BOOT);
    assert!(console.contains("planet-init: launcher started kind=builtin"), "{console}");
}

/// The env values come from user-data (a NoCloud seed), never from the kernel command line:
/// `planet.env` there is refused, because /proc/cmdline is readable by every pod and the kernel
/// prints the command line on the console.
#[test]
fn planet_release_gets_exactly_its_flags() {
    const SECRET: &str = "fixture-s3cret-Zk41";
    let s = Scratch::new("release-argv");
    let image = s.path("release.qcow2");
    // Refused at build time too, before anything is built, and without repeating the value.
    let out = planet_image()
        .args(["build", "--target", "qcow2", "--rootfs"])
        .arg(fixture("release-boot.tar.gz"))
        .arg("--cmdline")
        .arg(format!("planet.role=dev planet.env=FOO={SECRET}"))
        .arg("-o")
        .arg(&image)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--cmdline: planet.env is not accepted"), "{stderr}");
    assert!(!stderr.contains(SECRET) && !image.exists(), "{stderr}");
    // So is the cluster's join token.
    let out = planet_image()
        .args(["build", "--target", "qcow2", "--rootfs"])
        .arg(fixture("release-boot.tar.gz"))
        .args(["--cmdline", "planet.role=master planet.join_token=q4w8zt.m2x7c5v9b1n3k6j0", "-o"])
        .arg(&image)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--cmdline: planet.join_token is not accepted"), "{stderr}");
    assert!(!stderr.contains("m2x7c5") && !image.exists(), "{stderr}");
    build("qcow2", &fixture("release-boot.tar.gz"), &image, &[]);
    // `run --cmdline` refuses both before QEMU starts (they would be in its argv too).
    for (words, value) in [
        (format!("planet.role=dev planet.env=FOO={SECRET}"), SECRET),
        ("planet.role=master planet.join_token=q4w8zt.m2x7c5v9b1n3k6j0".to_string(), "m2x7c5"),
    ] {
        let out = planet_image().arg("run").arg(&image).args(["--snapshot", "--cmdline", &words]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("--cmdline: planet.") && stderr.contains("is not accepted"),
            "{stderr}"
        );
        assert!(!stderr.contains(value), "{stderr}");
    }
    let env_file = s.path("env");
    std::fs::write(&env_file, format!("FOO={SECRET}\nZONE=z1\n")).unwrap();
    // A node needs the cluster's join token; `join-token -o` writes it to a new 0600 file.
    let token_file = s.path("cluster.token");
    ok(planet_image().arg("join-token").arg("-o").arg(&token_file));
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    let seed = s.path("seed.img");
    ok(planet_image()
        .args(["seed", "--role", "node", "--master-ip", "10.0.2.2", "--env-file"])
        .arg(&env_file)
        .arg("--join-token-file")
        .arg(&token_file)
        .arg("-o")
        .arg(&seed)
        .env("SOURCE_DATE_EPOCH", "1700000000"));
    let cmdline = "planet.role=node planet.master_ip=10.0.2.2 planet.cloud_provider=aws";
    let seed_arg = seed.display().to_string();
    let mut guest = Guest::start(&image, &s, &["--snapshot", "--seed", &seed_arg, "--cmdline", cmdline]);
    let console = guest.wait_for("planet-fixture: done", BOOT);
    assert!(!console.contains(SECRET), "an env value reached the console:\n{console}");
    assert!(!console.contains(&token) && console.contains(" join_token=set "), "{console}");
    assert!(console.contains("env=FOO=***,ZONE=***") && console.contains("source=nocloud"), "{console}");
    let argv: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once("planet-fixture: argv[").map(|(_, r)| r))
        .filter_map(|r| r.split_once("]=").map(|(_, v)| v))
        .collect();
    assert!(argv.first().is_some_and(|a| a.ends_with("/rootfs/usr/bin/planet")), "{argv:?}");
    let flags: Vec<&str> = argv[1..].to_vec();
    assert_eq!(flags[0], "start");
    for f in ["--role=node", "--master-ip=10.0.2.2", "--cloud-provider=aws"] {
        assert!(flags.contains(&f), "missing {f} in {flags:?}");
    }
    // The env values reach the launcher through $PLANET_ENV, never its world-readable argv.
    assert!(console.contains("planet-fixture: env-keys=FOO,ZONE"), "{console}");
    assert!(!flags.iter().any(|f| f.starts_with("--env") || f.contains(SECRET)), "{flags:?}");
    for dst in ["/var/lib/etcd", "/var/lib/docker", "/var/lib/containerd", "/var/lib/kubelet"] {
        assert!(
            flags.iter().any(|f| f.starts_with("--volume=") && f.ends_with(&format!(":{dst}"))),
            "no --volume for {dst} in {flags:?}"
        );
    }
    let known = [
        "start",
        "--role=",
        "--master-ip=",
        "--cloud-provider=",
        "--volume=",
        "--public-ip=",
        "--hostname=",
        "--node-name=",
    ];
    for f in &flags {
        assert!(known.iter().any(|k| f.starts_with(k)), "unexpected flag {f:?} in {flags:?}");
    }
}

#[test]
fn acpi_power_off_stops_the_container_and_unmounts_before_powering_off() {
    let s = Scratch::new("powerdown");
    let image = demo_image(&s, "qcow2");
    let mut guest = Guest::start(&image, &s, &["--snapshot", "--cmdline", "planet.role=dev"]);
    guest.wait_for("demo-init: registered", BOOT);
    guest.monitor("system_powerdown");
    let status = guest.wait_exit(Duration::from_secs(120));
    let console = guest.console();
    assert!(status.is_some(), "QEMU did not exit after system_powerdown:\n{console}");
    let at = |needle: &str| console.find(needle).unwrap_or_else(|| panic!("no {needle:?} on the console:\n{console}"));
    let (stopped, unmounted, off) =
        (at("planet-init: container stopped"), at("planet-init: unmounted"), at("planet-init: power-off"));
    assert!(stopped < unmounted && unmounted < off, "out of order:\n{console}");
    assert!(console.contains("demo-init: stopped"), "the container's init was not stopped cleanly:\n{console}");
}

/// A stock distribution service runs as on a plain systemd host: Debian's etcd.service (user
/// `etcd`, data in `/var/lib/etcd`, shipped etcd:etcd 0700) starts on the state volume
/// planet-init mounts over `/var/lib/etcd`, which takes that directory's owner and mode.
#[test]
fn debian_etcd_service_runs_on_its_state_volume() {
    let s = Scratch::new("systemd-etcd");
    let image = s.path("systemd-etcd.qcow2");
    build("qcow2", &fixture("systemd-etcd.tar"), &image, &[]);
    let port = free_port();
    let mut guest =
        Guest::start(&image, &s, &["--snapshot", "--cmdline", "planet.role=dev", "--forward", &format!("{port}:2379")]);
    guest.wait_for("planet-init: launcher started kind=builtin", BOOT);
    // etcd's own error ("cannot access data directory: … permission denied") goes to the
    // journal; the console has systemd's status line, shortened to the console's width
    // ("[FAILED] Failed to start etcd.servi… highly-available key value store.").
    let failed = ["Failed to start etcd", "systemctl status etcd.service"];
    let put = poll(BOOT, || {
        let console = guest.console();
        if failed.iter().any(|f| console.contains(f)) {
            return Some(Err(()));
        }
        etcd_put(port, "/planet-test/owner", "etcd").map(Ok)
    });
    match put {
        Some(Ok(_)) => {}
        Some(Err(())) => panic!("Debian's etcd.service failed in the container; console:\n{}", guest.console()),
        None => panic!("etcd never took a write on the forwarded port; console:\n{}", guest.console()),
    }
    let found = etcd_range(port, "/planet-test/").unwrap_or_default();
    assert!(found.contains(&b64("etcd")), "the key written is not read back: {found}");
    let console = guest.console();
    assert!(console.contains("Started etcd"), "{console}");
    assert!(console.contains("planet-init: volume prepared path=/run/planet/state/volumes/etcd "), "{console}");
    for bad in [failed[0], failed[1], "permission denied"] {
        assert!(!console.to_lowercase().contains(&bad.to_lowercase()), "{bad:?} on the console:\n{console}");
    }
}
