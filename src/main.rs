use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches};
use planet_image::cli::{source_date_epoch, AppCommand, Cli, Command, PublishCommand};
use planet_image::{bundle, enter, fetch, inspect, join_token, pipeline, publish, seed, vm};

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
            let keep_raw = a.output.clone();
            let (req, ami) = a.request()?;
            if let Some(opts) = ami {
                let result = publish::aws::build_ami(req, keep_raw, &opts)?;
                println!("{}", serde_json::to_string_pretty(&result)?);
                return Ok(0);
            }
            let result = pipeline::run(&req)?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(0)
        }
        Command::Inspect(a) => {
            if bundle::is_bundle_file(&a.image)? {
                let result = bundle::inspect(&a.image, a.key.as_deref(), a.estimate_from.as_deref())?;
                println!("{}", serde_json::to_string_pretty(&result)?);
                return Ok(0);
            }
            if a.key.is_some() || a.estimate_from.is_some() {
                let flag = if a.key.is_some() { "--key" } else { "--estimate-from" };
                anyhow::bail!("{flag} is for update bundles; {} is not one", a.image.display());
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
            let result = bundle::run(&a.request()?)?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(0)
        }
        Command::Pull(a) => {
            let req = planet_image::pull::PullRequest { url: a.url, output: a.output, key: a.key, from: a.from };
            let result = planet_image::pull::run(&req)?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(0)
        }
        Command::Seed(a) => {
            let partition = a.partition.clone();
            let req = a.request()?;
            let summary = match &partition {
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
            let archive = a.archive.clone();
            let result = publish::gce::publish_file(&archive, &a.into())?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            Ok(0)
        }
        Command::Enter(a) => {
            // The command's own statuses are passed through; 255 is ours, as with ssh.
            Ok(enter::run(&a.into()).unwrap_or_else(|e| {
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
        Command::Run(a) => vm::run(&a.into()),
    }
}
