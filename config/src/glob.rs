//! Shell-style name matching, shared by coldplug (modalias patterns) and network-config
//! (`match: name:`). Iterative: a pattern of many `*` against a long name costs
//! O(pattern × name), never exponential backtracking, because it runs in PID 1 on input from
//! cloud-init data.

/// fnmatch(3) without flags: `*`, `?`, `[...]` with ranges and `!`/`^` negation, `\` escapes.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star = Some((p, i));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_class(pat, p, s[i]) {
                        if matched {
                            p = next;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == b'[' {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pat.len() => {
                    if pat[p + 1] == s[i] {
                        p += 2;
                        i += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[i] {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, si)) => {
                p = sp + 1;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|c| *c == b'*')
}

/// Matches `c` against the class starting at `pat[start] == '['`; returns (matched, index after
/// the class), or None if the class is unterminated (then `[` is literal).
fn match_class(pat: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = start + 1;
    let negate = matches!(pat.get(j), Some(b'!') | Some(b'^'));
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    while j < pat.len() {
        if pat[j] == b']' && !first {
            return Some((matched != negate, j + 1));
        }
        first = false;
        let lo = pat[j];
        if j + 2 < pat.len() && pat[j + 1] == b'-' && pat[j + 2] != b']' {
            if (lo..=pat[j + 2]).contains(&c) {
                matched = true;
            }
            j += 3;
        } else {
            if lo == c {
                matched = true;
            }
            j += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_fnmatch() {
        assert!(glob_match(b"virtio:d00000002v*", b"virtio:d00000002v00001AF4"));
        assert!(!glob_match(b"virtio:d00000002v*", b"virtio:d00000001v00001AF4"));
        assert!(glob_match(b"a?c*[x-z]", b"abcdefy"));
        assert!(!glob_match(b"a?c*[x-z]", b"abcdefw"));
        assert!(glob_match(b"[!a]b", b"cb"));
        assert!(!glob_match(b"[!a]b", b"ab"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"a*b*c", b"aXbYbZc"));
        assert!(!glob_match(b"a*b*c", b"aXbYbZ"));
        assert!(glob_match(b"e*", b"eth0"));
        assert!(glob_match(b"\\*x", b"*x"));
    }

    #[test]
    fn many_stars_cost_little() {
        let started = std::time::Instant::now();
        let pattern = format!("{}x", "*".repeat(10_000));
        assert!(!glob_match(pattern.as_bytes(), "enp0s31f6".repeat(100).as_bytes()));
        assert!(glob_match(pattern.as_bytes(), b"enp0s31f6x"));
        // Milliseconds when linear (a backtracking matcher never ends); the margin is for a loaded CI.
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    }
}
