//! Reference pages made from the command-line definition (src/cli.rs), so they cannot drift
//! from `--help`: Markdown for docs/cli/ (tests/cli_docs.rs fails when the committed pages
//! differ), man pages and shell completions for the Debian package (scripts/package).
//! `planet-image generate-docs` writes them; hidden subcommands are left out.

use anyhow::{Context, Result};
use clap::{Arg, Command};
use std::collections::BTreeMap;
use std::path::Path;

/// The command that brings docs/cli/ up to date, for the test's failure message.
pub const REGENERATE_MARKDOWN: &str = "cargo run -q --bin planet-image -- generate-docs --markdown docs/cli";

/// The tree as users see it: bin names and the --help/--version flags filled in by clap, no
/// `help` subcommand (every page has --help instead).
fn prepared(cmd: Command) -> Command {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    cmd
}

fn visible_subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

/// "planet-image-publish-aws": the page name of a (built) command.
fn page_stem(cmd: &Command) -> String {
    cmd.get_display_name().unwrap_or(cmd.get_name()).to_string()
}

/// "planet-image publish aws": how a user types it.
fn invocation(cmd: &Command) -> String {
    cmd.get_bin_name().unwrap_or(cmd.get_name()).to_string()
}

/// Every visible command of the tree, parents first.
fn all_commands(cmd: &Command) -> Vec<&Command> {
    let mut out = vec![cmd];
    for sub in visible_subcommands(cmd) {
        out.extend(all_commands(sub));
    }
    out
}

/// docs/cli/: file name → Markdown, one page per visible command.
pub fn markdown_pages(cmd: Command) -> BTreeMap<String, String> {
    let cmd = prepared(cmd);
    all_commands(&cmd).into_iter().map(|c| (format!("{}.md", page_stem(c)), markdown_page(c))).collect()
}

/// Man pages, section 1: file name (planet-image-build.1) → roff.
pub fn man_pages(cmd: Command) -> Result<BTreeMap<String, Vec<u8>>> {
    let cmd = prepared(cmd);
    let source = format!("planet-image {}", env!("CARGO_PKG_VERSION"));
    let mut pages = BTreeMap::new();
    for c in all_commands(&cmd) {
        let man = clap_mangen::Man::new(c.clone()).source(source.clone()).manual("planet-image manual");
        let mut roff = Vec::new();
        man.render(&mut roff).with_context(|| format!("rendering the man page of {}", invocation(c)))?;
        pages.insert(man.get_filename(), roff);
    }
    Ok(pages)
}

/// Shell completions: file name → script (planet-image.bash, _planet-image for zsh,
/// planet-image.fish); scripts/package puts each where its shell looks.
pub fn completions(cmd: Command) -> BTreeMap<String, Vec<u8>> {
    use clap_complete::Shell;
    let mut out = BTreeMap::new();
    for (shell, file) in
        [(Shell::Bash, "planet-image.bash"), (Shell::Zsh, "_planet-image"), (Shell::Fish, "planet-image.fish")]
    {
        let mut cmd = cmd.clone();
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, "planet-image", &mut script);
        out.insert(file.to_string(), script);
    }
    out
}

/// Writes `files` into `dir` (each atomically) and removes files there that match `stale`
/// but are not among them: a page of a command that no longer exists must not linger.
pub fn write_dir(dir: &Path, files: &BTreeMap<String, Vec<u8>>, stale: impl Fn(&str) -> bool) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if stale(&name) && !files.contains_key(&name) {
            std::fs::remove_file(entry.path()).with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    for (name, bytes) in files {
        crate::util::atomic::write_file(&dir.join(name), bytes)?;
    }
    Ok(())
}

fn markdown_page(cmd: &Command) -> String {
    let mut md = String::new();
    md.push_str(
        "<!-- Generated from src/cli.rs by `planet-image generate-docs --markdown docs/cli`: \
         edit the help text there, not this file. -->\n\n",
    );
    md.push_str(&format!("# {}\n\n", invocation(cmd)));
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.trim().strip_prefix("Usage:").unwrap_or(&usage).trim();
    md.push_str(&format!("```text\n{usage}\n```\n"));
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        md.push('\n');
        md.push_str(&markdown_text(&about.to_string()));
    }

    let subs: Vec<&Command> = visible_subcommands(cmd).collect();
    if !subs.is_empty() {
        md.push_str("\n## Subcommands\n\n");
        for sub in subs {
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            md.push_str(&format!(
                "- [`{}`]({}.md): {}\n",
                invocation(sub),
                page_stem(sub),
                escape_inline(&one_line(&about))
            ));
        }
    }

    // Sections in the order their first argument appears: positionals, then clap's default
    // "Options", then each help heading (e.g. the AMI options).
    let mut sections: Vec<(String, Vec<&Arg>)> = Vec::new();
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        let title = if arg.is_positional() {
            "Arguments".to_string()
        } else {
            arg.get_help_heading().unwrap_or("Options").to_string()
        };
        match sections.iter_mut().find(|(t, _)| *t == title) {
            Some((_, args)) => args.push(arg),
            None => sections.push((title, vec![arg])),
        }
    }
    for (title, args) in sections {
        md.push_str(&format!("\n## {title}\n"));
        for arg in args {
            md.push_str(&format!("\n### `{}`\n\n", arg_synopsis(arg)));
            if let Some(help) = arg.get_long_help().or(arg.get_help()) {
                md.push_str(&markdown_text(&help.to_string()));
            }
            md.push_str(&arg_facts(arg));
        }
    }
    md
}

/// `-o, --output <FILE>`, `--bios`, `<IMAGE>`, `-- <COMMAND>...`.
fn arg_synopsis(arg: &Arg) -> String {
    let takes_value = arg.get_action().takes_values();
    let names: Vec<String> = match arg.get_value_names() {
        Some(names) => names.iter().map(|n| format!("<{n}>")).collect(),
        None => vec![format!("<{}>", arg.get_id().as_str().to_uppercase())],
    };
    let many = arg.get_num_args().is_some_and(|r| r.max_values() > names.len());
    let mut value = names.join(" ");
    if many {
        value.push_str("...");
    }
    if arg.is_positional() {
        return if arg.is_last_set() { format!("-- {value}") } else { value };
    }
    let mut s = String::new();
    if let Some(c) = arg.get_short() {
        s.push_str(&format!("-{c}"));
        if arg.get_long().is_some() {
            s.push_str(", ");
        }
    }
    if let Some(l) = arg.get_long() {
        s.push_str(&format!("--{l}"));
    }
    if takes_value {
        s.push(' ');
        s.push_str(&value);
    }
    s
}

/// Default, possible values and environment variable: what `--help` shows in brackets, with
/// each value's own help as a list.
fn arg_facts(arg: &Arg) -> String {
    let mut out = String::new();
    if !arg.get_action().takes_values() {
        return out;
    }
    let mut facts = Vec::new();
    let defaults: Vec<String> = arg.get_default_values().iter().map(|v| format!("`{}`", v.to_string_lossy())).collect();
    if !defaults.is_empty() && !arg.is_hide_default_value_set() {
        facts.push(format!("Default: {}.", defaults.join(", ")));
    }
    if let (Some(env), false) = (arg.get_env(), arg.is_hide_env_set()) {
        facts.push(format!("Environment: `{}`.", env.to_string_lossy()));
    }
    let values: Vec<_> = if arg.is_hide_possible_values_set() {
        Vec::new()
    } else {
        arg.get_possible_values().into_iter().filter(|v| !v.is_hide_set()).collect()
    };
    if values.iter().any(|v| v.get_help().is_some()) {
        facts.push("Values:".to_string());
    } else if !values.is_empty() {
        let names: Vec<String> = values.iter().map(|v| format!("`{}`", v.get_name())).collect();
        facts.push(format!("Values: {}.", names.join(", ")));
    }
    if !facts.is_empty() {
        out.push_str(&format!("\n{}\n", facts.join(" ")));
    }
    if values.iter().any(|v| v.get_help().is_some()) {
        out.push('\n');
        for v in &values {
            match v.get_help() {
                Some(h) => {
                    out.push_str(&format!("- `{}`: {}\n", v.get_name(), escape_inline(&one_line(&h.to_string()))))
                }
                None => out.push_str(&format!("- `{}`\n", v.get_name())),
            }
        }
    }
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Help text as Markdown: paragraphs stay paragraphs, indented lines (examples in the long
/// help) become code blocks, and characters Markdown would take as markup outside `code`
/// spans are escaped.
fn markdown_text(text: &str) -> String {
    let mut out = String::new();
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() {
            i += 1;
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        if line.starts_with("  ") {
            let start = i;
            while i < lines.len() && (lines[i].starts_with("  ") || lines[i].trim().is_empty()) {
                i += 1;
            }
            let mut block: Vec<&str> = lines[start..i].to_vec();
            while block.last().is_some_and(|l| l.trim().is_empty()) {
                block.pop();
            }
            let indent = block
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.len() - l.trim_start().len())
                .min()
                .unwrap_or(0);
            out.push_str("```text\n");
            for l in block {
                out.push_str(l.get(indent..).unwrap_or("").trim_end());
                out.push('\n');
            }
            out.push_str("```\n");
        } else {
            while i < lines.len() && !lines[i].trim().is_empty() && !lines[i].starts_with("  ") {
                out.push_str(&escape_inline(lines[i].trim_end()));
                out.push('\n');
                i += 1;
            }
        }
    }
    out
}

/// Escapes `\ < > *` and `_` outside backtick code spans; `_` only at a word's edge, where
/// Markdown could read it as emphasis (SOURCE_DATE_EPOCH stays readable).
fn escape_inline(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_code = false;
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '`' {
            in_code = !in_code;
            out.push(c);
            continue;
        }
        if !in_code {
            let word = |j: Option<usize>| j.and_then(|j| chars.get(j)).is_some_and(|c| c.is_alphanumeric());
            let escape = match c {
                '\\' | '<' | '>' | '*' => true,
                '_' => !(word(i.checked_sub(1)) && word(Some(i + 1))),
                _ => false,
            };
            if escape {
                out.push('\\');
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_outside_code_spans_is_escaped() {
        assert_eq!(escape_inline("a <b> `c <d>` *e* f_g _h_"), "a \\<b\\> `c <d>` \\*e\\* f_g \\_h\\_");
    }

    #[test]
    fn indented_help_lines_become_code_blocks() {
        let md = markdown_text("Intro:\n  cmd one\n    more\n\nAfter.");
        assert_eq!(md, "Intro:\n\n```text\ncmd one\n  more\n```\n\nAfter.\n");
    }

    #[test]
    fn hidden_subcommands_have_no_pages() {
        let pages = markdown_pages(<crate::cli::Cli as clap::CommandFactory>::command());
        assert!(pages.contains_key("planet-image.md"));
        assert!(pages.contains_key("planet-image-build.md"));
        assert!(pages.contains_key("planet-image-publish-aws.md"));
        assert!(!pages.keys().any(|k| k.contains("guestfwd") || k.contains("generate-docs")), "{pages:?}");
        assert!(!pages["planet-image.md"].contains("guestfwd"));
        let man = man_pages(<crate::cli::Cli as clap::CommandFactory>::command()).unwrap();
        assert!(man.contains_key("planet-image-build.1") && man.contains_key("planet-image-publish-gce.1"));
        assert!(!man.keys().any(|k| k.contains("guestfwd") || k.contains("generate-docs")), "{man:?}");
    }
}
