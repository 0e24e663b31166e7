use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches};
use planet_image::cli::{AppCommand, Cli, Command, PublishCommand};
use planet_image::pipeline::{self, BuildRequest, Target};
use planet_image::{bundle, enter, fetch, inspect, join_token, publish, seed, vm};
use std::time::Duration;

fn main() {
    let cli = parse_command_line();
    // Commands that leave temporary files or a pending snapshot clean up on SIGINT/SIGTERM;
    // `run` and `enter` handle signals themselves.
    if matches!(cli.command, Command::Build(_) | Command::Bundle(_) | Command::Seed(_) | Command::Publish(_)) {
        if let Err(e) = planet_image::util::interrupt::install() {
            print_error(&e.context("installing the signal handler"));
            std::process::exit(1);
        }
    }
    let result = dispatch(cli);
    // Everything dispatch made is dropped by now; a signal may still have come at the end.
    if let Some(code) = planet_image::util::interrupt::exit_code() {
        planet_image::util::interrupt::remove_registered();
        // The error says what was undone (a deleted snapshot, say).
        if let Err(e) = &result {
            print_error(e);
        }
        eprintln!("planet-image: interrupted");
        std::process::exit(code);
    }
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            print_error(&e);
            std::process::exit(1);
        }
    }
}

/// `Cli::parse()`, except that `--version` also names the planet-init a build would use and
/// its digest; that reads and hashes the file, so only when --version may be asked for.
fn parse_command_line() -> Cli {
    let mut cmd = Cli::command();
    if std::env::args_os().skip(1).any(|a| a == "--version") {
        cmd = cmd.long_version(&*Box::leak(planet_image::cli::long_version().into_boxed_str()));
    }
    Cli::from_arg_matches(&cmd.get_matches()).unwrap_or_else(|e| e.exit())
}

fn print_error(e: &anyhow::Error) {
    eprintln!("planet-image: error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Fetch(a) => {
            let cache = fetch::Cache::new(a.cache.cache_dir.as_deref())?;
            let records = cache.fetch(&a.kernel)?;
            println!("{}", serde_json::to_string_pretty(&records)?);
            Ok(0)
        }
        Command::Build(a) => {
            let epoch = a.host.source_date_epoch.map_or_else(source_date_epoch, Ok)?;
            let target = Target::from(a.target);
            let ami = match target {
                Target::Ami => Some(a.aws.options()?),
                _ if a.aws.name.is_some() => anyhow::bail!("--name and the other AMI options need --target ami"),
                _ => None,
            };
            let output = match (&a.output, &ami) {
                (Some(o), _) => o.clone(),
                (None, Some(_)) => Default::default(),
                (None, None) => anyhow::bail!("-o/--output FILE is required for --target raw and qcow2"),
            };
            let req = BuildRequest {
                target,
                rootfs: a.rootfs,
                output,
                layout: a.layout,
                profile: a.profile,
                sector_size: a.sector_size,
                cmdline: a.cmdline,
                bios: a.bios,
                kernel_package: a.host.kernel_package,
                bootloader_package: a.bootloader_package,
                planet_init: a.host.planet_init,
                cache_dir: a.host.cache.cache_dir,
                compression: a.host.compression.into(),
                epoch,
                release: a.release_version,
                update_key: a.update_key,
                apps: a.app,
            };
            if let Some(opts) = ami {
                let result = publish::aws::build_ami(req, a.output, &opts)?;
                println!("{}", serde_json::to_string_pretty(&result)?);
                return Ok(0);
            }
            let result = pipeline::run(&req)?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(0)
        }
        Command::Inspect(a) => {
            if bundle::is_bundle_file(&a.image)? {
                let result = bundle::inspect(&a.image, a.key.as_deref())?;
                println!("{}", serde_json::to_string_pretty(&result)?);
                return Ok(0);
            }
            if a.key.is_some() {
                anyhow::bail!("--key verifies update bundles; {} is not one", a.image.display());
            }
            print!("{}", inspect::run(&a.image, a.manifest.as_deref())?);
            Ok(0)
        }
        Command::Keygen(a) => {
            let result = bundle::keygen(&a.output)?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(0)
        }
        Command::Bundle(a) => {
            let epoch = a.host.source_date_epoch.map_or_else(source_date_epoch, Ok)?;
            let result = bundle::run(&bundle::BundleRequest {
                rootfs: a.rootfs,
                key: a.key,
                update_key: a.update_key,
                release: a.release_version,
                output: a.output,
                layout: a.layout,
                profile: a.profile,
                kernel_package: a.host.kernel_package,
                planet_init: a.host.planet_init,
                cache_dir: a.host.cache.cache_dir,
                compression: a.host.compression.into(),
                epoch,
                expires: a.expires,
                revokes: a.revokes,
                apps: a.app,
            })?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(0)
        }
        Command::Seed(a) => {
            let mut env = a.env;
            for f in &a.env_file {
                env.extend(seed::read_env_file(f)?);
            }
            let join_token = a.join_token_file.as_deref().map(join_token::read_file).transpose()?;
            let req = seed::SeedRequest {
                role: a.role,
                master_ip: a.master_ip,
                provider: a.provider,
                env,
                hostname: a.hostname,
                address: a.address,
                gateway: a.gateway,
                dns: a.dns,
                interface: a.interface,
                update: a.update,
                join_token,
                format: a.format.into(),
                output: a.output,
            };
            let summary = match &a.partition {
                Some(image) => seed::append_partition(&req, image, source_date_epoch()?)?,
                None => seed::write(&req, source_date_epoch()?)?,
            };
            println!("{}", serde_json::to_string_pretty(&summary)?);
            Ok(0)
        }
        Command::JoinToken(a) => {
            let token = join_token::generate();
            match &a.output {
                Some(path) => join_token::write_new(path, &token)?,
                None => println!("{}", token.reveal()),
            }
            Ok(0)
        }
        Command::Publish(PublishCommand::Aws(a)) => {
            let result = publish::aws::publish_file(&a.image, &a.aws.options()?)?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(0)
        }
        Command::Publish(PublishCommand::Gce(a)) => {
            let result = publish::gce::publish_file(
                &a.archive,
                &publish::gce::GceOptions {
                    bucket: a.bucket,
                    project: a.project,
                    name: a.name,
                    family: a.family,
                    description: a.description,
                    object: a.object,
                    chunk_size: a.chunk_size,
                    storage_endpoint: a.storage_endpoint,
                    compute_endpoint: a.compute_endpoint,
                    wait_timeout: Duration::from_secs(a.wait_timeout),
                },
            )?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(0)
        }
        Command::Enter(a) => {
            let req = enter::EnterRequest {
                vm: a.vm,
                command: a.command,
                tty: (a.tty || a.no_tty).then_some(a.tty),
                wait: Duration::from_secs(a.wait),
            };
            // The command's own statuses are passed through; 255 is ours, as with ssh.
            Ok(enter::run(&req).unwrap_or_else(|e| {
                print_error(&e);
                255
            }))
        }
        Command::GenerateDocs(a) => {
            let cmd = Cli::command();
            if let Some(dir) = &a.markdown {
                let pages = planet_image::cli_docs::markdown_pages(cmd.clone());
                let pages = pages.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
                planet_image::cli_docs::write_dir(dir, &pages, |n| {
                    n.starts_with("planet-image") && n.ends_with(".md")
                })?;
            }
            if let Some(dir) = &a.man {
                let pages = planet_image::cli_docs::man_pages(cmd.clone())?;
                planet_image::cli_docs::write_dir(dir, &pages, |n| n.starts_with("planet-image") && n.ends_with(".1"))?;
            }
            if let Some(dir) = &a.completions {
                planet_image::cli_docs::write_dir(dir, &planet_image::cli_docs::completions(cmd), |_| false)?;
            }
            Ok(0)
        }
        Command::App(AppCommand::Build(a)) => {
            let out = match a.output {
                Some(o) => o,
                None => {
                    let spec = a.dir.join(planet_config::app::SPEC_FILE);
                    let text = std::fs::read_to_string(&spec)
                        .with_context(|| format!("reading {}: an app directory holds app.yaml", spec.display()))?;
                    let spec = planet_config::app::AppSpec::parse(&text)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", spec.display()))?;
                    format!("{}-{}.app", spec.name, spec.version).into()
                }
            };
            let report = planet_image::app::build(&a.dir, &out)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(0)
        }
        Command::GuestfwdRelay { port } => {
            // stderr is the guest's connection too: an error is the exit status only.
            Ok(if planet_image::vm::net::relay(port).is_ok() { 0 } else { 1 })
        }
        Command::Run(a) => vm::run(&vm::RunRequest {
            image: a.image,
            seed: a.seed,
            forwards: a.forward,
            cmdline: a.cmdline,
            memory_mib: a.memory,
            cpus: a.cpus,
            serial_log: a.serial_log,
            timeout: a.timeout.map(Duration::from_secs),
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
        }),
    }
}

/// SOURCE_DATE_EPOCH when set, else now.
fn source_date_epoch() -> Result<u64> {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let s = v.to_string_lossy();
        return s.parse().map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds"));
    }
    Ok(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs())
}
