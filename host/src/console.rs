//! Console events: `planet-init: <event> key=value …`, one per line, the only interface tests
//! and operators have to a machine that has no shell.

use std::io::Write;

/// Prefix of every line planet-init prints; tests match on it.
pub const PREFIX: &str = "planet-init:";

/// Quotes a value when it would otherwise break `key=value` splitting.
pub fn quote(v: &str) -> String {
    if !v.is_empty() && !v.chars().any(|c| c.is_whitespace() || c == '"' || c == '\\' || c.is_control()) {
        return v.to_string();
    }
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Renders one event line (without the newline).
pub fn format_event(event: &str, fields: &[(&str, String)]) -> String {
    let mut line = format!("{PREFIX} {event}");
    for (k, v) in fields {
        line.push(' ');
        line.push_str(k);
        line.push('=');
        line.push_str(&quote(v));
    }
    line
}

/// Prints one event line to stdout (the console) and flushes it, so lines survive a power-off
/// right after.
pub fn emit(event: &str, fields: &[(&str, String)]) {
    let line = format_event(event, fields);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `event!("network", iface = name, address = addr)` prints
/// `planet-init: network iface=… address=…`.
#[macro_export]
macro_rules! event {
    ($name:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::console::emit($name, &[$((stringify!($k), format!("{}", $v))),*])
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_only_when_needed() {
        assert_eq!(
            format_event("fatal", &[("error", "mounting /x: No such file".into()), ("code", "2".into())]),
            "planet-init: fatal error=\"mounting /x: No such file\" code=2"
        );
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
    }
}
