//! The command line: one struct per subcommand.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "planet-image",
    version,
    // Every argument and subcommand must say what it is for: clap's debug_assert (the test
    // below) fails on one without help, and the man pages and docs/cli/ are made from it.
    help_expected = true,
    about = "Build bootable A/B disk images that run a Planet Kubernetes rootfs",
    long_about = "Build bootable A/B disk images that run a Planet Kubernetes rootfs.\n\n\
        Quick start:\n  planet-image fetch\n  planet-image build --target qcow2 --rootfs planet.tar -o planet.qcow2\n  \
        planet-image run planet.qcow2 --cmdline planet.role=dev --forward 2379:2379\n\n\
        Results go to stdout, progress to stderr."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Download the kernel, boot loader, OVMF and GRUB (for --bios) packages into the cache (apt-get download).
    Fetch(FetchArgs),
    /// Build a bootable disk image from a Planet rootfs.
    Build(BuildArgs),
    /// Show an image's partitions and contents and verify it against its manifest, or show an
    /// update bundle (verified with --key).
    Inspect(InspectArgs),
    /// Make a key pair for signing update bundles: NAME.key (secret, mode 0600) and NAME.pub.
    #[command(long_about = "Make a key pair for signing update bundles.\n\n\
        Writes NAME.key, the secret key (mode 0600), and NAME.pub, the public key, in minisign's \
        formats: an unencrypted Ed25519 key as `minisign -G -W` makes it, so `minisign -S` can sign with \
        it and `minisign -V -p NAME.pub` can check a bundle's signature. Existing files are never \
        overwritten. Put NAME.pub into images with `build --update-key NAME.pub` and sign bundles with \
        `bundle --key NAME.key`. The key id and the paths are printed as JSON.")]
    Keygen(KeygenArgs),
    /// Build a signed update bundle: the next release's slot image, kernel and initramfs, for
    /// machines that update themselves.
    #[command(long_about = "Build a signed update bundle.\n\n\
        A machine runs its release from slot planet-a or planet-b; a bundle carries the next release \
        for the other slot: the squashfs of --rootfs, and the kernel and initramfs it boots with, \
        built exactly as `build` builds them (same layout, kernel package, planet-init, compression \
        and SOURCE_DATE_EPOCH give the same files). The bundle is signed with --key (minisign's \
        prehashed Ed25519); machines check the signature against the key in their initramfs and \
        install only releases newer than their own (natural order: 1.10 > 1.9).\n\n\
        Format 1: a 4096-byte prelude (magic PLBUNDLE, format, the minisign signature text whose \
        trusted comment holds the release and the total size), then the signed part: a JSON header \
        and the sections rootfs, vmlinuz and initramfs at 4096-aligned offsets. `minisign -V` checks \
        the signed part (bytes 4096 to the end) with the prelude's signature text. The file appears \
        only when complete; the result is JSON on stdout.")]
    Bundle(BundleArgs),
    /// Fetch a signed update bundle over HTTP(S), taking every chunk that earlier bundles here
    /// already hold (--from) and fetching only the rest.
    #[command(long_about = "Fetch a signed update bundle over HTTP(S), fetching only what is not here.\n\n\
        A chunked bundle (the default of `bundle`) on a server that answers range requests is made \
        chunk by chunk, as a machine's planet-init makes it when it updates: chunks that the --from \
        files hold (an earlier bundle's sections, or any file) are copied from them, the rest are \
        fetched by range, and every chunk is checked against the signed index before it is written. \
        A broken pull leaves OUT.partial, and the next pull of the same bundle fetches only what is \
        still missing. A bundle without chunks, or a server that ignores ranges, is fetched whole. \
        Either way the file is verified whole against --key before it appears under its name. \
        For a mirror at the edge, a cluster's own copy, or to measure what an update downloads; \
        the counts are printed as JSON.")]
    Pull(PullArgs),
    /// Boot an image in QEMU with UEFI firmware (or SeaBIOS: --firmware bios).
    Run(RunArgs),
    /// A shell, or one command (`enter VM -- CMD ARGS…`), inside the Planet container of a VM
    /// started by `planet-image run`; no network port is involved.
    #[command(long_about = "A shell, or one command, inside the Planet container of a running VM.\n\n\
        `planet-image enter VM` opens a login shell (/bin/bash -l, else /bin/sh -l) in the container \
        planet-init runs — its mount, pid, uts, ipc and cgroup namespaces, its root, /root as the working \
        directory, a clean environment (PATH, HOME=/root, TERM, container=planet, plus the KEY=VALUE lines \
        of the container's /etc/planet/enter.env). `planet-image enter VM -- CMD ARGS…` runs one command \
        and exits with its status (128+N when signal N killed it), for scripts and tests.\n\n\
        A terminal is used when stdin and stdout are terminals (-t forces one, -T never): the local \
        terminal goes into raw mode, window size changes follow. Without one, stdin, stdout and stderr \
        are passed separately.\n\n\
        VM is the name given to `run --name` (by default the image's file name without its extension; \
        `run` prints it) or the path of the socket given to `run --enter-socket`.\n\n\
        Transport: `run` gives every VM a virtio-serial port (org.planet-image.enter) backed by a Unix \
        socket in a private directory, $XDG_RUNTIME_DIR/planet-image/vms/NAME/enter.sock or \
        /tmp/planet-image-UID/vms/NAME/enter.sock. No network port is opened, on the host or in the \
        guest, and it works without KVM and whatever the guest's networking does. The channel carries \
        one session at a time: a second `enter` is refused while one runs.\n\n\
        Exit status: the command's; 126 or 127 when it cannot be run or is not found; 255 when \
        planet-image or the machine cannot run it (VM not running, channel busy, no container).")]
    Enter(EnterArgs),
    /// Publish an image built before to a cloud: `publish aws FILE.raw --name NAME` registers an AMI,
    /// `publish gce FILE.tar.gz --bucket B --project P --name N` creates a GCE image.
    #[command(subcommand)]
    Publish(PublishCommand),
    /// Write a NoCloud or ConfigDrive seed image with cloud-init data (QEMU, bare metal).
    Seed(SeedArgs),
    /// Make a new cluster join token: the secret a node shows the master to join the cluster.
    #[command(long_about = "Make a new cluster join token.\n\n\
        A join token is the secret that lets a node join a master: the node proves with it that it may \
        join, and checks with it that the master it talks to is the cluster's own. It is a Kubernetes \
        bootstrap token, 6 characters of a-z and 0-9, a '.', then 16 more (abcdef.0123456789abcdef), drawn \
        from the operating system's random number generator.\n\n\
        Put the same value in the user-data of the master and of every node:\n\n  \
        #cloud-config\n  planet:\n    role: node\n    master_ip: 10.0.0.10\n    join_token: \"TOKEN\"\n\n\
        or pass the file to `planet-image seed --join-token-file FILE`. A node without one is refused at \
        boot; a master without one runs, but no node can join it. Never put it on a kernel command line \
        (planet.join_token= is refused: every process can read /proc/cmdline).\n\n\
        The token is printed on stdout, or with -o written to a new file of mode 0600 (nothing printed), \
        which keeps it off the terminal and out of scroll-back: `planet-image join-token -o cluster.token`.")]
    JoinToken(JoinTokenArgs),
    /// Apps: Kubernetes manifests and their container images, packed to travel inside images
    /// (`app build DIR`, then `build --app NAME.app`).
    #[command(subcommand)]
    App(AppCommand),
    /// QEMU runs this for each guest connection of a `run --guestfwd`: it relays the connection
    /// (stdin and stdout, one socket) to 127.0.0.1:PORT. Not for people.
    #[command(hide = true)]
    GuestfwdRelay {
        /// The port on 127.0.0.1.
        port: u16,
    },
    /// Write the reference pages made from this command line: Markdown (the repository's
    /// docs/cli/), man pages and shell completions. For tests and scripts/package.
    #[command(hide = true)]
    GenerateDocs(GenerateDocsArgs),
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Check an app's directory and pack it into one NAME-VERSION.app file for `build --app`.
    #[command(long_about = "Check an app's directory and pack it into one .app file.\n\n\
        DIR holds app.yaml (name, version, the manifests in the order they are applied, the images, \
        the secrets the master makes, the health checks; see docs/apps.md), the Kubernetes manifests \
        and the container images as docker archives (`docker save -o images/web.tar web:1.2`). The \
        check: app.yaml is valid, every manifest document is a Kubernetes object, every image a pod \
        template names is in one of the archives, and no container would ask a registry \
        (imagePullPolicy Always, or :latest without IfNotPresent, or an image named by digest, is \
        refused). The package is a tar: package.json (the spec, the SHA-256 of every file, every \
        image's ID and tags), then the files; the same directory always gives the same bytes. It \
        appears only when complete; a JSON report goes to stdout.")]
    Build(AppBuildArgs),
}

#[derive(Debug, Args)]
pub struct AppBuildArgs {
    /// The app's directory (holding app.yaml).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// The package to write [default: NAME-VERSION.app in the current directory].
    #[arg(short, long, value_name = "FILE.app")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct GenerateDocsArgs {
    /// Markdown pages, one per command (stale planet-image*.md pages there are removed).
    #[arg(long, value_name = "DIR")]
    pub markdown: Option<PathBuf>,
    /// Man pages: planet-image.1 and planet-image-COMMAND.1, uncompressed.
    #[arg(long, value_name = "DIR")]
    pub man: Option<PathBuf>,
    /// Shell completions: planet-image.bash, _planet-image (zsh) and planet-image.fish.
    #[arg(long, value_name = "DIR")]
    pub completions: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// Write the token to this new file (mode 0600; an existing file is never replaced)
    /// instead of printing it.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CacheArgs {
    /// Package cache [default: $PLANET_IMAGE_CACHE, $XDG_CACHE_HOME/planet-image or ~/.cache/planet-image].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

/// The inputs `build` and `bundle` share: what makes the slot and the host (kernel,
/// initramfs) of a release, so the same values give the same files from either command.
#[derive(Debug, Args)]
pub struct HostInputArgs {
    /// Kernel package (.deb of linux-image-<version>-…) instead of the cached one.
    #[arg(long, value_name = "FILE.deb")]
    pub kernel_package: Option<PathBuf>,
    /// The static planet-init binary [default: $PLANET_INIT, else planet-init beside planet-image,
    /// ../lib/planet-image/planet-init from planet-image's directory, this workspace's static
    /// build, or the package's /usr/lib/planet-image/planet-init; `planet-image --version` names it].
    #[arg(long, value_name = "FILE")]
    pub planet_init: Option<PathBuf>,
    /// Squashfs block compression: zstd, zstd:LEVEL (1-22) or none.
    #[arg(long, default_value_t = Compression::default())]
    pub compression: Compression,
    /// Timestamp for everything the builder makes up (FAT, ext4, squashfs, a bundle's `created`);
    /// same inputs and same value give byte-identical output [default: now].
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
    pub source_date_epoch: Option<u64>,
    /// Make the kernel + initramfs anew, without reading or filling the host stage cache (the
    /// package cache's host/, keyed by the digest of every input; entries are checked before use).
    #[arg(long)]
    pub no_host_cache: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// `--compression`: the squashfs stage's [`crate::squashfs::Compression`] as typed on the
/// command line, default included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd(u8),
    None,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(15)
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let level = match s.split_once(':') {
            Some(("zstd", l)) => l.parse::<u8>().map_err(|_| format!("bad zstd level {l:?}"))?,
            None if s == "zstd" => 15,
            None if s == "none" => return Ok(Compression::None),
            _ => return Err(format!("unknown compression {s:?}: use zstd, zstd:LEVEL (1-22) or none")),
        };
        if !(1..=22).contains(&level) {
            return Err(format!("zstd level {level} is outside 1-22"));
        }
        Ok(Compression::Zstd(level))
    }
}

/// The stage's spelling, so `--help`'s default reads as manifests write it.
impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::squashfs::Compression::from(*self).fmt(f)
    }
}

impl From<Compression> for crate::squashfs::Compression {
    fn from(c: Compression) -> Self {
        match c {
            Compression::Zstd(level) => Self::Zstd(level),
            Compression::None => Self::None,
        }
    }
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Kernel meta package (repeatable); its versioned linux-image dependency is fetched too.
    /// The cloud kernel serves the qcow2, AMI and GCE images; `linux-image-amd64` the metal layout.
    #[arg(long, default_values_t = vec!["linux-image-cloud-amd64".to_string()])]
    pub kernel: Vec<String>,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "qcow2")]
    pub target: Target,
    /// The Planet rootfs: a directory, a .tar/.tar.gz/.tar.zst/.tar.xz, or a Planet release
    /// tarball whose top-level rootfs/ becomes the root.
    #[arg(long, value_name = "PATH")]
    pub rootfs: PathBuf,
    /// The image to write; FILE.manifest.json is written beside it. Required except for
    /// --target ami, where it keeps the raw image that was uploaded (else a temporary one is used).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Partition layout (TOML) [default: the built-in image-layouts/default.toml].
    #[arg(long, value_name = "FILE.toml")]
    pub layout: Option<PathBuf>,
    /// Built-in layout when --layout is not given: `default` (cloud kernel; qcow2, AMI, GCE) or
    /// `metal` (Debian's generic kernel with every server storage and NIC driver class).
    #[arg(long, default_value = "default", value_parser = ["default", "metal"])]
    pub profile: String,
    /// Logical sector size of the disk the image is for: 512 (also 512e disks) or 4096 (4Kn).
    /// A GPT and a FAT32 ESP are laid out for one size, so 4Kn disks need their own image.
    #[arg(long, value_name = "BYTES", value_parser = parse_sector_size)]
    pub sector_size: Option<u64>,
    /// Extra kernel command line, appended after `console=… planet.slot=a`. Checked as
    /// planet-init will read it; `planet.env=` is refused (the command line is readable by every
    /// pod and printed on the console): environment goes in user-data or a seed's --env-file.
    #[arg(long, value_name = "ARGS")]
    pub cmdline: Option<String>,
    /// Also boot on legacy BIOS (old servers, `uefi-preferred` AMIs): GRUB's boot.img in the
    /// protective MBR, its core.img in a BIOS boot partition after the ESP (the layout's [bios]
    /// section), grub.cfg on the ESP. UEFI still boots systemd-boot. Needs grub-mkimage (grub-common)
    /// and 512-byte sectors.
    #[arg(long)]
    pub bios: bool,
    /// systemd-boot-efi package (.deb) instead of the cached one.
    #[arg(long, value_name = "FILE.deb")]
    pub bootloader_package: Option<PathBuf>,
    /// The image's release version, in its boot entry (`version`) and manifest; machines install
    /// only update bundles of a newer release [default: the first 12 hex digits of the rootfs digest].
    #[arg(long, value_name = "VERSION")]
    pub release_version: Option<String>,
    /// Public key (keygen's NAME.pub, or minisign's) that update bundles must be signed with:
    /// placed into the initramfs at /etc/planet/update.pub, its key id recorded in the manifest.
    /// Several NAME.pub files concatenated (oldest first) are trusted together, for a key
    /// rotation. Without it the machine accepts no updates.
    #[arg(long, value_name = "NAME.pub")]
    pub update_key: Option<PathBuf>,
    /// An app package (`app build`'s NAME.app) to carry in the slot (repeatable; applied by the
    /// master in this order, its images loaded on every machine without a registry).
    #[arg(long, value_name = "NAME.app")]
    pub app: Vec<PathBuf>,
    #[command(flatten)]
    pub host: HostInputArgs,
    #[command(flatten)]
    pub aws: AwsArgs,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The key pair's name: NAME.key and NAME.pub are written.
    #[arg(short, long, value_name = "NAME")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct BundleArgs {
    /// The new release's Planet rootfs: a directory, a .tar/.tar.gz/.tar.zst/.tar.xz, or a Planet
    /// release tarball.
    #[arg(long, value_name = "PATH")]
    pub rootfs: PathBuf,
    /// Secret key to sign with: keygen's NAME.key or an unencrypted minisign key (`minisign -G -W`).
    #[arg(long, value_name = "NAME.key")]
    pub key: PathBuf,
    /// The release version of the bundle (required): machines install only newer releases.
    #[arg(long, value_name = "VERSION")]
    pub release_version: Option<String>,
    /// Public key(s) that later bundles must be signed with, put into the new release's initramfs
    /// [default: the public half of --key, so the machine keeps trusting the same key]. Several
    /// NAME.pub files concatenated, oldest first, are a key rotation's overlap: bundles signed by
    /// any of them are accepted. See docs/updates.md.
    #[arg(long, value_name = "NAME.pub")]
    pub update_key: Option<PathBuf>,
    /// When machines start refusing the bundle: a UTC date (2027-01-31), a time
    /// (2027-01-31T12:00Z) or a duration from now (90d, 12h, 2w). Signed, so a man in the middle
    /// cannot hold back newer releases past it [default: never expires].
    #[arg(long, value_name = "DATE|DURATION")]
    pub expires: Option<String>,
    /// Key id (16 hex digits) that machines must stop trusting; repeatable. Honoured only by
    /// machines whose key file lists that key before (older than) the key signing this bundle.
    #[arg(long = "revoke", value_name = "KEY_ID")]
    pub revokes: Vec<String>,
    /// The bundle to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Partition layout (TOML): its kernel package and module classes make the initramfs
    /// [default: the built-in image-layouts/default.toml].
    #[arg(long, value_name = "FILE.toml")]
    pub layout: Option<PathBuf>,
    /// Built-in layout when --layout is not given: `default` or `metal`; use the one the machines
    /// were built with.
    #[arg(long, default_value = "default", value_parser = ["default", "metal"])]
    pub profile: String,
    /// An app package (`app build`'s NAME.app) the next release carries (repeatable, in the
    /// order the master applies them): an update brings the next versions of the apps.
    #[arg(long, value_name = "NAME.app")]
    pub app: Vec<PathBuf>,
    /// Write the bundle without chunk indexes, for machines whose planet-init predates chunked
    /// bundles (they refuse the signed header digest that chunked bundles carry). By default
    /// every section is indexed by content-defined chunks, so a machine can fetch only the
    /// chunks it does not hold (docs/updates.md).
    #[arg(long)]
    pub no_chunks: bool,
    /// Also print how many bytes a machine running the release of OLD.planet (an earlier
    /// bundle) would download to update to this one, against the bundle's whole size.
    #[arg(long, value_name = "OLD.planet", conflicts_with = "no_chunks")]
    pub estimate_from: Option<PathBuf>,
    #[command(flatten)]
    pub host: HostInputArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// A raw GPT disk (sparse file), for `dd` onto a disk or any hypervisor.
    Raw,
    /// A qcow2 image, for QEMU/KVM.
    Qcow2,
    /// An AMI registered in your AWS account through the EBS direct APIs (the raw image is
    /// uploaded; it is kept only with -o).
    Ami,
    /// A GCE image archive: disk.raw (whole GiB) as a sparse member of a gzip'd GNU tar.
    Gce,
}

impl From<Target> for crate::pipeline::Target {
    fn from(t: Target) -> Self {
        match t {
            Target::Raw => Self::Raw,
            Target::Qcow2 => Self::Qcow2,
            Target::Ami => Self::Ami,
            Target::Gce => Self::Gce,
        }
    }
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A raw or qcow2 image, or an update bundle (printed as JSON).
    pub image: PathBuf,
    /// Manifest to verify against [default: IMAGE.manifest.json].
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// For an update bundle: the public key to verify it with (signature, size and every
    /// section's digest); the result says "verified": true, or the command fails.
    #[arg(long, value_name = "NAME.pub")]
    pub key: Option<PathBuf>,
    /// For a chunked update bundle: also print how many bytes a machine running the release of
    /// OLD.planet (an earlier bundle) downloads to update to this one.
    #[arg(long, value_name = "OLD.planet")]
    pub estimate_from: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The bundle's http:// or https:// URL.
    #[arg(value_name = "URL")]
    pub url: String,
    /// The public key the bundle must be signed with (keygen's NAME.pub; several concatenated
    /// are a key ring).
    #[arg(long, value_name = "NAME.pub")]
    pub key: PathBuf,
    /// Where to write the bundle (it appears only when complete and verified).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// An earlier bundle whose sections may hold chunks of this one (or any other file);
    /// repeatable.
    #[arg(long, value_name = "FILE")]
    pub from: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EnterArgs {
    /// The VM: its name (`run --name`; by default the image's file stem) or its enter socket's path.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// Use a terminal even when stdin or stdout is not one.
    #[arg(short = 't', long, conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never use a terminal: stdin, stdout and stderr are passed separately.
    #[arg(short = 'T', long)]
    pub no_tty: bool,
    /// How long to wait for the machine to answer (it may still be booting).
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub wait: u64,
    /// The command and its arguments, after `--` [default: a login shell].
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A raw or qcow2 image.
    pub image: PathBuf,
    /// A NoCloud/ConfigDrive seed image attached as a second, read-only disk.
    #[arg(long, value_name = "FILE")]
    pub seed: Option<PathBuf>,
    /// Forward a TCP port from 127.0.0.1 on the host to the guest (repeatable).
    #[arg(long, value_name = "HOST:GUEST", value_parser = crate::vm::parse_forward)]
    pub forward: Vec<(u16, u16)>,
    /// Extra kernel arguments: boots the image's own kernel and initramfs through the firmware
    /// with the default entry's options plus these (the image is not modified).
    #[arg(long, value_name = "ARGS")]
    pub cmdline: Option<String>,
    /// Guest memory.
    #[arg(long, value_name = "MiB", default_value_t = 1024)]
    pub memory: u32,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Write the serial console to this file instead of the terminal.
    #[arg(long, value_name = "FILE")]
    pub serial_log: Option<PathBuf>,
    /// Stop QEMU (and fail) if the guest has not powered off after this long.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// QEMU human monitor on this Unix socket (e.g. for `system_powerdown`).
    #[arg(long, value_name = "SOCKET")]
    pub monitor: Option<PathBuf>,
    /// Accelerator.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Firmware: UEFI (OVMF from the cache) or legacy BIOS (QEMU's SeaBIOS; for images built with --bios).
    #[arg(long, value_enum, default_value = "uefi")]
    pub firmware: Firmware,
    /// Controller of the boot disk.
    #[arg(long, value_enum, default_value = "virtio")]
    pub disk_bus: DiskBus,
    /// Logical and physical block size of the boot disk, e.g. 4096 for a 4Kn disk.
    #[arg(long, value_name = "BYTES")]
    pub block_size: Option<u32>,
    /// Keep the image unchanged: the guest's writes go to a temporary overlay.
    #[arg(long)]
    pub snapshot: bool,
    /// The VM's name for `planet-image enter NAME` [default: the image's file stem, with -2, -3…
    /// when a VM of that name runs already].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Put the VM's enter socket here instead of the per-user directory
    /// ($XDG_RUNTIME_DIR/planet-image/vms/NAME/enter.sock or /tmp/planet-image-UID/vms/…);
    /// `planet-image enter PATH` uses it.
    #[arg(long, value_name = "PATH")]
    pub enter_socket: Option<PathBuf>,
    #[command(flatten)]
    pub net: VmNetArgs,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when /dev/kvm can really create a virtual CPU, else TCG.
    Auto,
    Kvm,
    Tcg,
}

/// What the machine boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    /// OVMF (UEFI) from the package cache: systemd-boot.
    Uefi,
    /// QEMU's default SeaBIOS (legacy BIOS): GRUB from the MBR, for images built with --bios.
    Bios,
}

/// The controller the boot disk hangs off, as on the platforms the images are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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

impl From<Accel> for crate::vm::Accel {
    fn from(a: Accel) -> Self {
        match a {
            Accel::Auto => Self::Auto,
            Accel::Kvm => Self::Kvm,
            Accel::Tcg => Self::Tcg,
        }
    }
}

impl From<Firmware> for crate::vm::Firmware {
    fn from(f: Firmware) -> Self {
        match f {
            Firmware::Uefi => Self::Uefi,
            Firmware::Bios => Self::Bios,
        }
    }
}

impl From<DiskBus> for crate::vm::DiskBus {
    fn from(b: DiskBus) -> Self {
        match b {
            DiskBus::Virtio => Self::Virtio,
            DiskBus::Nvme => Self::Nvme,
            DiskBus::Scsi => Self::Scsi,
            DiskBus::Ahci => Self::Ahci,
        }
    }
}

/// `run` options for cloud look-alikes and multi-VM tests.
#[derive(Debug, Clone, Args)]
pub struct VmNetArgs {
    /// An SMBIOS entry, passed to QEMU as `-smbios` (repeatable), e.g.
    /// `type=1,manufacturer=Amazon EC2,product=t3.micro` or
    /// `type=1,manufacturer=Google,product=Google Compute Engine`.
    #[arg(long, value_name = "STRING")]
    pub smbios: Vec<String>,
    /// Guest connections to GUESTIP:PORT reach 127.0.0.1:HOSTPORT on the host (repeatable), e.g.
    /// `10.0.2.100:80=8080` for a test metadata server with `planet.metadata_url=http://10.0.2.100`.
    /// Each guest connection gets a connection of its own to the host port, so clients in the
    /// guest may talk at once. Only 127.0.0.1 is reachable; the user network stays restricted.
    #[arg(long, value_name = "GUESTIP:PORT=HOSTPORT", value_parser = crate::vm::net::parse_guestfwd)]
    pub guestfwd: Vec<crate::vm::net::GuestFwd>,
    /// A second virtio NIC joined to another VM through a socket on 127.0.0.1 (repeatable):
    /// `listen:PORT` on the first VM, `connect:PORT` on the other (start the listener first).
    #[arg(long, value_name = "listen:PORT|connect:PORT", value_parser = crate::vm::net::parse_link)]
    pub link: Vec<crate::vm::net::Link>,
    /// MAC address of the link NICs, in order (default: 52:54:01:PP:PP:01 for listen, …:02 for
    /// connect, PPPP the port), e.g. for a seed's `--interface MAC`.
    #[arg(long, value_name = "MAC", value_parser = crate::vm::net::parse_mac)]
    pub link_mac: Vec<String>,
}

impl From<VmNetArgs> for crate::vm::net::VmNet {
    fn from(a: VmNetArgs) -> Self {
        Self { smbios: a.smbios, guestfwd: a.guestfwd, link: a.link, link_mac: a.link_mac }
    }
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// The machine's role: master, node, or dev (master and node on one machine).
    #[arg(long)]
    pub role: String,
    /// The master's address (required for a node).
    #[arg(long, value_name = "IP")]
    pub master_ip: Option<std::net::Ipv4Addr>,
    /// Cloud provider integration: aws, gce or none.
    #[arg(long, default_value = "none")]
    pub provider: String,
    /// Environment for Planet (repeatable); values are never printed, but a value given here is
    /// visible to other users in `ps` and kept in shell history: pass secrets with --env-file.
    #[arg(long, value_name = "KEY=VALUE", value_parser = crate::seed::parse_env)]
    pub env: Vec<(String, String)>,
    /// Environment for Planet from a file (repeatable): one KEY=VALUE a line, `#` comments.
    /// The seed image is written mode 0600 either way.
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// The cluster's join token (required for --role node, optional for a master): a file
    /// holding it, as `planet-image join-token -o FILE` writes it (a file other users can read
    /// is refused). Never taken from the command line, where `ps` would show it.
    #[arg(long, value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
    /// Host name of the machine.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Static address instead of DHCP.
    #[arg(long, value_name = "CIDR", value_parser = crate::seed::parse_cidr)]
    pub address: Option<(std::net::Ipv4Addr, u8)>,
    /// Default gateway for the static address.
    #[arg(long, value_name = "IP")]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// DNS server (repeatable).
    #[arg(long, value_name = "IP")]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// The NIC that gets --address: a name or glob (`eth1`, `e*`, the default) or a MAC address.
    #[arg(long, value_name = "NAME|MAC")]
    pub interface: Option<String>,
    /// An update agent setting under `planet: update:` (repeatable): url=http://IP/PATH,
    /// check_every=1h, bless_after=60s, trial_timeout=10m, health_url=http://127.0.0.1:PORT/PATH,
    /// reboot=now|HH:MM-HH:MM (UTC). (allow_downgrade is ignored: downgrades only through the
    /// update socket.) See docs/updates.md.
    #[arg(long = "update", value_name = "KEY=VALUE", value_parser = crate::seed::parse_update)]
    pub update: Vec<(String, String)>,
    /// With --format config-2: append the config drive as a partition named config-2 at the end
    /// of this raw image (as Ironic does) instead of writing -o; first-boot growth of
    /// planet-state then stops in front of it. The image's manifest no longer matches.
    #[arg(long, value_name = "IMAGE.raw")]
    pub partition: Option<PathBuf>,
    /// Seed layout.
    #[arg(long, value_enum, default_value = "nocloud")]
    pub format: SeedFormat,
    /// The seed image to write (FAT, label CIDATA or config-2).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeedFormat {
    /// cloud-init NoCloud, volume label CIDATA.
    Nocloud,
    /// OpenStack ConfigDrive (Ironic, Rackspace OnMetal), volume label config-2.
    #[value(name = "config-2")]
    ConfigDrive,
}

impl From<SeedFormat> for crate::seed::SeedFormat {
    fn from(f: SeedFormat) -> Self {
        match f {
            SeedFormat::Nocloud => Self::Nocloud,
            SeedFormat::ConfigDrive => Self::ConfigDrive,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PublishCommand {
    /// Register a raw image as an AMI through the EBS direct APIs (no S3, no builder instance).
    /// Credentials and region come from the standard AWS chain (environment, profile, SSO,
    /// instance role); AWS_ENDPOINT_URL is honoured. The result is JSON on stdout.
    Aws(PublishAwsArgs),
    /// Make a GCE image from the archive of `build --target gce`: a resumable upload to Cloud
    /// Storage (resumed, not restarted, after a broken connection), then images.insert with
    /// UEFI_COMPATIBLE, VIRTIO_SCSI_MULTIQUEUE and GVNIC, waiting on the operation. Credentials come
    /// from the Google application-default chain (GOOGLE_APPLICATION_CREDENTIALS, gcloud's
    /// application_default_credentials.json, the metadata server on GCE); GCE_ACCESS_TOKEN, when
    /// set, is used as the access token instead. The result is JSON on stdout.
    Gce(PublishGceArgs),
}

#[derive(Debug, Args)]
pub struct PublishGceArgs {
    /// The GCE image archive (gzip'd tar holding disk.raw) from `build --target gce`.
    #[arg(value_name = "FILE.tar.gz")]
    pub archive: PathBuf,
    /// Cloud Storage bucket the archive is uploaded to.
    #[arg(long, value_name = "BUCKET")]
    pub bucket: String,
    /// Google Cloud project the image is created in.
    #[arg(long, value_name = "PROJECT")]
    pub project: String,
    /// The image's name (a-z, 0-9, -; starts with a letter).
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// The image family, so instances can use the latest image of it.
    #[arg(long, value_name = "FAMILY")]
    pub family: Option<String>,
    /// The image's description.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Object name in the bucket [default: NAME.tar.gz].
    #[arg(long, value_name = "OBJECT")]
    pub object: Option<String>,
    /// Upload chunk: a multiple of 256K (e.g. 256K, 8M, 64M).
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = crate::publish::gce::upload::parse_chunk_size)]
    pub chunk_size: u64,
    /// Cloud Storage endpoint (an emulator's `host:port` or URL) [default: https://storage.googleapis.com].
    #[arg(long, env = "STORAGE_EMULATOR_HOST", value_name = "URL")]
    pub storage_endpoint: Option<String>,
    /// Compute Engine API endpoint [default: https://compute.googleapis.com].
    #[arg(long, env = "GCE_COMPUTE_ENDPOINT", value_name = "URL")]
    pub compute_endpoint: Option<String>,
    /// How long to wait for the image to be created.
    #[arg(long, value_name = "SECONDS", default_value_t = 1800)]
    pub wait_timeout: u64,
}

#[derive(Debug, Args)]
pub struct PublishAwsArgs {
    /// A raw image (qcow2 is refused: convert it or build with --target raw).
    #[arg(value_name = "FILE.raw")]
    pub image: PathBuf,
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// The AMI options shared by `build --target ami` and `publish aws`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "AMI options (build --target ami, publish aws)")]
pub struct AwsArgs {
    /// The AMI's name (required). If the account already has an AMI of that name in the region,
    /// it is reported and reused and nothing is uploaded.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// AWS region [default: AWS_REGION or the profile's region].
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// The AMI's and the snapshot's description [default: planet-image VERSION DIGEST].
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// A tag for the AMI and its snapshot (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = crate::publish::aws::parse_tag)]
    pub tags: Vec<(String, String)>,
    /// The AMI's boot mode.
    #[arg(long, value_enum, default_value = "uefi")]
    pub boot_mode: BootMode,
    /// Root volume size in GiB [default: the image size rounded up to a GiB]; the state partition
    /// grows to fill it at first boot.
    #[arg(long, value_name = "GiB")]
    pub volume_size: Option<u64>,
    /// Replace an AMI of the same name: deregister it and delete its snapshot, then register anew.
    #[arg(long)]
    pub force: bool,
    /// Keep the snapshot when the upload or registration fails (it is deleted by default).
    #[arg(long)]
    pub keep_snapshot: bool,
    /// Blocks uploaded at once.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub upload_concurrency: usize,
    /// How long to wait for the snapshot to complete.
    #[arg(long, value_name = "SECONDS", default_value_t = 1800)]
    pub wait_timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootMode {
    /// UEFI only (the image has no BIOS boot loader).
    Uefi,
    /// UEFI where the instance type supports it.
    UefiPreferred,
}

impl From<BootMode> for crate::publish::aws::BootMode {
    fn from(m: BootMode) -> Self {
        match m {
            BootMode::Uefi => Self::Uefi,
            BootMode::UefiPreferred => Self::UefiPreferred,
        }
    }
}

impl AwsArgs {
    /// The publisher's options; `--name` is required.
    pub fn options(&self) -> anyhow::Result<crate::publish::aws::AwsOptions> {
        let name =
            self.name.clone().filter(|n| !n.trim().is_empty()).ok_or_else(|| {
                anyhow::anyhow!("--name is required: the AMI's name (unique in the account and region)")
            })?;
        Ok(crate::publish::aws::AwsOptions {
            name,
            region: self.region.clone(),
            description: self.description.clone(),
            tags: self.tags.clone(),
            boot_mode: self.boot_mode.into(),
            volume_size_gib: self.volume_size,
            force: self.force,
            keep_snapshot: self.keep_snapshot,
            concurrency: self.upload_concurrency.max(1),
            wait_timeout: std::time::Duration::from_secs(self.wait_timeout),
        })
    }
}

fn parse_sector_size(s: &str) -> Result<u64, String> {
    match s {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!("{s:?}: the sector size is 512 or 4096")),
    }
}

// What each subcommand's arguments become: the request its module takes. main.rs hands these
// over; no module below the CLI sees a clap type.

/// SOURCE_DATE_EPOCH when set, else now: the timestamp of whatever a command makes up.
pub fn source_date_epoch() -> anyhow::Result<u64> {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let s = v.to_string_lossy();
        return s.parse().map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds"));
    }
    Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs())
}

impl HostInputArgs {
    /// `--source-date-epoch` (or its variable), else now.
    pub fn epoch(&self) -> anyhow::Result<u64> {
        self.source_date_epoch.map_or_else(source_date_epoch, Ok)
    }
}

impl BuildArgs {
    /// The build request, and for `--target ami` the AMI's options.
    pub fn request(self) -> anyhow::Result<(crate::pipeline::BuildRequest, Option<crate::publish::aws::AwsOptions>)> {
        let epoch = self.host.epoch()?;
        let target = crate::pipeline::Target::from(self.target);
        let ami = match target {
            crate::pipeline::Target::Ami => Some(self.aws.options()?),
            _ if self.aws.name.is_some() => anyhow::bail!("--name and the other AMI options need --target ami"),
            _ => None,
        };
        let output = match (self.output, &ami) {
            (Some(o), _) => o,
            (None, Some(_)) => Default::default(),
            (None, None) => anyhow::bail!("-o/--output FILE is required for --target raw and qcow2"),
        };
        let request = crate::pipeline::BuildRequest {
            target,
            rootfs: self.rootfs,
            output,
            layout: self.layout,
            profile: self.profile,
            sector_size: self.sector_size,
            cmdline: self.cmdline,
            bios: self.bios,
            kernel_package: self.host.kernel_package,
            bootloader_package: self.bootloader_package,
            planet_init: self.host.planet_init,
            cache_dir: self.host.cache.cache_dir,
            compression: self.host.compression.into(),
            epoch,
            release: self.release_version,
            update_key: self.update_key,
            apps: self.app,
            host_cache: !self.host.no_host_cache,
        };
        Ok((request, ami))
    }
}

impl BundleArgs {
    pub fn request(self) -> anyhow::Result<crate::bundle::BundleRequest> {
        Ok(crate::bundle::BundleRequest {
            epoch: self.host.epoch()?,
            rootfs: self.rootfs,
            key: self.key,
            update_key: self.update_key,
            release: self.release_version,
            output: self.output,
            layout: self.layout,
            profile: self.profile,
            kernel_package: self.host.kernel_package,
            planet_init: self.host.planet_init,
            cache_dir: self.host.cache.cache_dir,
            compression: self.host.compression.into(),
            expires: self.expires,
            revokes: self.revokes,
            apps: self.app,
            host_cache: !self.host.no_host_cache,
            chunks: !self.no_chunks,
            estimate_from: self.estimate_from,
        })
    }
}

impl SeedArgs {
    /// The seed request, with the `--env-file` and `--join-token-file` contents read in.
    pub fn request(self) -> anyhow::Result<crate::seed::SeedRequest> {
        let mut env = self.env;
        for f in &self.env_file {
            env.extend(crate::seed::read_env_file(f)?);
        }
        let join_token = self.join_token_file.as_deref().map(crate::join_token::read_file).transpose()?;
        Ok(crate::seed::SeedRequest {
            role: self.role,
            master_ip: self.master_ip,
            provider: self.provider,
            env,
            hostname: self.hostname,
            address: self.address,
            gateway: self.gateway,
            dns: self.dns,
            interface: self.interface,
            update: self.update,
            join_token,
            format: self.format.into(),
            output: self.output,
        })
    }
}

impl From<PublishGceArgs> for crate::publish::gce::GceOptions {
    fn from(a: PublishGceArgs) -> Self {
        crate::publish::gce::GceOptions {
            bucket: a.bucket,
            project: a.project,
            name: a.name,
            family: a.family,
            description: a.description,
            object: a.object,
            chunk_size: a.chunk_size,
            storage_endpoint: a.storage_endpoint,
            compute_endpoint: a.compute_endpoint,
            wait_timeout: std::time::Duration::from_secs(a.wait_timeout),
        }
    }
}

impl From<EnterArgs> for crate::enter::EnterRequest {
    fn from(a: EnterArgs) -> Self {
        crate::enter::EnterRequest {
            vm: a.vm,
            command: a.command,
            tty: (a.tty || a.no_tty).then_some(a.tty),
            wait: std::time::Duration::from_secs(a.wait),
        }
    }
}

impl From<RunArgs> for crate::vm::RunRequest {
    fn from(a: RunArgs) -> Self {
        crate::vm::RunRequest {
            image: a.image,
            seed: a.seed,
            forwards: a.forward,
            cmdline: a.cmdline,
            memory_mib: a.memory,
            cpus: a.cpus,
            serial_log: a.serial_log,
            timeout: a.timeout.map(std::time::Duration::from_secs),
            monitor: a.monitor,
            cache_dir: a.cache.cache_dir,
            accel: a.accel.into(),
            firmware: a.firmware.into(),
            disk_bus: a.disk_bus.into(),
            block_size: a.block_size,
            snapshot: a.snapshot,
            net: a.net.into(),
            name: a.name,
            enter_socket: a.enter_socket,
        }
    }
}

/// `--version`'s text: the version, then the planet-init `build` and `bundle` use without
/// --planet-init and its digest (the manifest records the same digest), or why there is none.
pub fn long_version() -> String {
    let version = env!("CARGO_PKG_VERSION");
    match crate::pipeline::locate_planet_init(None) {
        Ok(found) => match crate::util::digest::sha256_file(&found.path) {
            Ok(digest) => format!(
                "{version}\nplanet-init: {} ({})\nplanet-init sha256: {digest}",
                found.path.display(),
                found.source
            ),
            Err(e) => {
                format!("{version}\nplanet-init: {} ({}) cannot be read: {e:#}", found.path.display(), found.source)
            }
        },
        Err(e) => format!("{version}\nplanet-init: none: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{Cli, Compression};
    use clap::CommandFactory;

    #[test]
    fn parses_and_shows_compression() {
        assert_eq!("none".parse::<Compression>(), Ok(Compression::None));
        assert_eq!("zstd".parse::<Compression>(), Ok(Compression::Zstd(15)));
        assert_eq!("zstd:3".parse::<Compression>(), Ok(Compression::Zstd(3)));
        assert!("none:1".parse::<Compression>().is_err());
        assert!("zstd:0".parse::<Compression>().is_err());
        assert!("gzip".parse::<Compression>().unwrap_err().contains("none"));
        // What a manifest records is accepted back by --compression.
        use crate::squashfs::Compression as Stage;
        for c in [Stage::None, Stage::Zstd(15), Stage::Zstd(1)] {
            assert_eq!(c.to_string().parse::<Compression>().map(Stage::from), Ok(c));
        }
        assert_eq!(Compression::default().to_string(), "zstd:15");
    }

    /// clap's own consistency checks over the whole tree, including `help_expected`: an
    /// argument without help text fails here, not in a user's man page.
    #[test]
    fn cli_definition_is_consistent_and_documented() {
        Cli::command().debug_assert();
    }

    /// help_expected covers arguments only; subcommands need a summary too, for `--help`'s list,
    /// their man page's NAME line and docs/cli/.
    #[test]
    fn every_subcommand_has_a_summary() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "planet-image", &mut missing);
        assert!(missing.is_empty(), "subcommands without a doc comment: {missing:?}");
    }
}
