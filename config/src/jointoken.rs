//! The cluster join secret (`planet: join_token:`), in the Kubernetes bootstrap-token format
//! `[a-z0-9]{6}.[a-z0-9]{16}`: the same value in the user-data of the master and every node.
//! It is a credential, so this type has no `Display`, its `Debug` prints `***`, and no error
//! about it quotes the value (only what is wrong with it).

use std::fmt;

/// Length of the public token id before the `.`.
pub const ID_LEN: usize = 6;
/// Length of the secret after the `.`.
pub const SECRET_LEN: usize = 16;

/// How to get a good one, appended to every complaint about a bad one.
pub const JOIN_TOKEN_HOWTO: &str = "a join token is 6 characters of a-z and 0-9, a '.', then 16 more (like \
     abcdef.0123456789abcdef); make one with `planet-image join-token` and put the same value in the user-data of \
     the master and of every node (planet: join_token:)";

/// A validated join token; the only way to read it is [`JoinToken::reveal`].
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken(String);

impl JoinToken {
    /// Checks the format; the error says what is wrong without quoting any of the text.
    pub fn parse(text: &str) -> Result<JoinToken, String> {
        if text.is_empty() {
            return Err("is empty".into());
        }
        let Some((id, secret)) = text.split_once('.') else {
            return Err(format!(
                "has no '.' (it is {} characters long; the format is the 6-character id, '.', the 16-character \
                 secret)",
                text.chars().count()
            ));
        };
        if let Some(pos) = text.chars().position(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.')) {
            let what = match text.chars().nth(pos) {
                Some(c) if c.is_ascii_uppercase() => "an upper-case letter",
                Some(c) if c.is_whitespace() => "white space",
                _ => "a character other than a-z, 0-9 and '.'",
            };
            return Err(format!("has {what} at position {}", pos + 1));
        }
        if secret.contains('.') {
            return Err("has more than one '.'".into());
        }
        if id.len() != ID_LEN {
            return Err(format!("has {} characters before the '.', not {ID_LEN}", id.len()));
        }
        if secret.len() != SECRET_LEN {
            return Err(format!("has {} characters after the '.', not {SECRET_LEN}", secret.len()));
        }
        Ok(JoinToken(text.to_string()))
    }

    /// The token itself, for the one place it goes: the container's 0600 environment file.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken(***)")
    }
}

/// Text read from a source that may be a join token, not checked yet: `Debug` prints `***`
/// so a [`crate::RawConfig`] can be printed whole.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretText(String);

impl SecretText {
    pub fn new(text: impl Into<String>) -> Self {
        SecretText(text.into())
    }

    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretText(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_token_format_is_enforced() {
        assert_eq!(JoinToken::parse("abcdef.0123456789abcdef").unwrap().reveal(), "abcdef.0123456789abcdef");
        let cases = [
            ("", "is empty"),
            ("abcdef0123456789abcdef", "has no '.'"),
            ("abcdeF.0123456789abcdef", "upper-case letter at position 6"),
            ("abcdef.0123456789abcde ", "white space at position 23"),
            ("abc_ef.0123456789abcdef", "other than a-z, 0-9 and '.' at position 4"),
            ("abcdef.0123456789.bcdef", "more than one '.'"),
            ("abcde.0123456789abcdef", "5 characters before the '.', not 6"),
            ("abcdef.0123456789abcdefg", "17 characters after the '.', not 16"),
            ("abcdéf.0123456789abcdef", "other than a-z"),
        ];
        for (bad, want) in cases {
            let e = JoinToken::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
            for part in bad.split('.').filter(|p| p.len() >= 3) {
                assert!(!e.contains(part), "{bad:?} echoed: {e}");
            }
        }
    }

    #[test]
    fn debug_never_shows_the_value() {
        let t = JoinToken::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(format!("{t:?}"), "JoinToken(***)");
        assert_eq!(format!("{:?}", SecretText::new("abcdef.0123456789abcdef")), "SecretText(***)");
    }
}
