//! Names of the systemd-boot loader entries of the two slots, and which one systemd-boot boots.
//!
//! An entry file is `planet-GGGG-S[+LEFT[-DONE]].conf`: `GGGG` a generation that grows with every
//! installed update, `S` the slot (`a` or `b`), and the optional Boot Loader Specification boot
//! counter. systemd-boot renames a counted entry before each try (`+3` → `+2-1` → …); an entry
//! with no tries left (`+0-3`) is "bad" and sorted last, so the firmware falls back to the other
//! slot. With no `default` in loader.conf, systemd-boot boots the first entry of its order: bad
//! entries last, the rest by id, highest version first — here, the newest generation.

use std::cmp::Ordering;
use std::fmt;

/// A boot counter: tries left and tries done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tries {
    pub left: u32,
    pub done: u32,
}

/// One parsed entry file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryName {
    pub generation: u32,
    pub slot: char,
    /// `None`: blessed (or never counted).
    pub tries: Option<Tries>,
}

/// Tries a new release gets before systemd-boot gives up on it.
pub const DEFAULT_TRIES: u32 = 3;

impl EntryName {
    pub fn new(generation: u32, slot: char) -> EntryName {
        EntryName { generation, slot, tries: None }
    }

    /// A fresh entry on trial, with `tries` boots to prove itself.
    pub fn counted(generation: u32, slot: char, tries: u32) -> EntryName {
        EntryName { generation, slot, tries: Some(Tries { left: tries, done: 0 }) }
    }

    /// Parses `planet-0002-b+2-1.conf`; `None` for any other file.
    pub fn parse(file_name: &str) -> Option<EntryName> {
        let stem = file_name.strip_suffix(".conf")?;
        let rest = stem.strip_prefix("planet-")?;
        let (base, counter) = match rest.split_once('+') {
            Some((b, c)) => (b, Some(c)),
            None => (rest, None),
        };
        let (generation, slot) = base.split_once('-')?;
        if generation.is_empty() || !generation.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let generation = generation.parse().ok()?;
        let slot = match slot {
            "a" => 'a',
            "b" => 'b',
            _ => return None,
        };
        let number = |s: &str| -> Option<u32> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
        };
        let tries = match counter {
            None => None,
            Some(c) => {
                let (left, done) = match c.split_once('-') {
                    Some((l, d)) => (number(l)?, number(d)?),
                    None => (number(c)?, 0),
                };
                Some(Tries { left, done })
            }
        };
        Some(EntryName { generation, slot, tries })
    }

    /// The entry's id without the counter (`planet-0002-b`).
    pub fn id(&self) -> String {
        format!("planet-{:04}-{}", self.generation, self.slot)
    }

    pub fn file_name(&self) -> String {
        match self.tries {
            None => format!("{}.conf", self.id()),
            Some(Tries { left, done: 0 }) => format!("{}+{left}.conf", self.id()),
            Some(Tries { left, done }) => format!("{}+{left}-{done}.conf", self.id()),
        }
    }

    /// No tries left: systemd-boot will not pick it.
    pub fn is_bad(&self) -> bool {
        matches!(self.tries, Some(Tries { left: 0, .. }))
    }

    /// Still on trial (counted, tries left).
    pub fn on_trial(&self) -> bool {
        matches!(self.tries, Some(Tries { left, .. }) if left > 0)
    }

    /// The name after a good boot: the counter removed.
    pub fn blessed(&self) -> EntryName {
        EntryName { tries: None, ..self.clone() }
    }

    /// What systemd-boot renames the entry to when it starts a try.
    pub fn after_try(&self) -> EntryName {
        match self.tries {
            Some(Tries { left, done }) if left > 0 => {
                EntryName { tries: Some(Tries { left: left - 1, done: done + 1 }), ..self.clone() }
            }
            _ => self.clone(),
        }
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file_name())
    }
}

/// The text of a Boot Loader Specification entry for `slot`: its kernel and initramfs live in
/// the slot's directory on the ESP ([`crate::contract::esp_slot_dir`]).
pub fn entry_conf(title: &str, version: &str, slot: char, options: &str) -> String {
    let (linux, initrd) = (crate::contract::kernel_path(slot), crate::contract::initramfs_path(slot));
    format!("title {title}\nversion {version}\nlinux /{linux}\ninitrd /{initrd}\noptions {options}\n")
}

/// A field (`version`, `options`, …) of an entry's text.
pub fn entry_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim())
    })
}

/// `options` with `planet.slot=` pointing at `slot` (added when missing), and without
/// `planet.env=` or `planet.join_token=` (refused on the command line: they would carry
/// secrets into every new entry).
pub fn options_for_slot(options: &str, slot: char) -> String {
    let options = crate::CmdlineConfig::without_secrets(options);
    let mut words: Vec<String> =
        options.split_whitespace().filter(|w| !w.starts_with("planet.slot=")).map(str::to_string).collect();
    let at = options.split_whitespace().position(|w| w.starts_with("planet.slot=")).unwrap_or(words.len());
    words.insert(at.min(words.len()), format!("planet.slot={slot}"));
    words.join(" ")
}

/// systemd-boot's order for our entries: not-bad before bad, then the newest generation first.
pub fn boot_order(a: &EntryName, b: &EntryName) -> Ordering {
    a.is_bad().cmp(&b.is_bad()).then(b.generation.cmp(&a.generation)).then(b.slot.cmp(&a.slot))
}

/// The entry systemd-boot boots by default among `entries` (the first not-bad one in its order;
/// when every entry is bad, the first bad one, as systemd-boot does).
pub fn default_entry(entries: &[EntryName]) -> Option<&EntryName> {
    entries.iter().min_by(|a, b| boot_order(a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copied_options_lose_planet_env() {
        assert_eq!(
            options_for_slot("console=ttyS0 planet.slot=a planet.env=PW=hunter2 planet.role=dev", 'b'),
            "console=ttyS0 planet.slot=b planet.role=dev"
        );
    }

    #[test]
    fn names_round_trip() {
        for name in ["planet-0001-a.conf", "planet-0002-b+3.conf", "planet-0002-b+2-1.conf", "planet-0012-a+0-3.conf"] {
            let e = EntryName::parse(name).unwrap();
            assert_eq!(e.file_name(), name);
        }
        let e = EntryName::parse("planet-0002-b+2-1.conf").unwrap();
        assert_eq!(e, EntryName { generation: 2, slot: 'b', tries: Some(Tries { left: 2, done: 1 }) });
        assert_eq!(e.id(), "planet-0002-b");
    }

    #[test]
    fn other_files_are_not_entries() {
        for name in [
            "planet-a.conf",
            "planet-0001-c.conf",
            "planet-0001-a.conf.tmp",
            "planet--a.conf",
            "planet-0001-a+.conf",
            "planet-0001-a+x.conf",
            "planet-0001-a+1-.conf",
            "planet-0001-a+1-2-3.conf",
            "other.conf",
            "planet-99999999999-a.conf",
        ] {
            assert_eq!(EntryName::parse(name), None, "{name}");
        }
    }

    #[test]
    fn counting_down_to_bad_then_falling_back() {
        let old = EntryName::new(1, 'a');
        let mut new = EntryName::counted(2, 'b', DEFAULT_TRIES);
        assert_eq!(new.file_name(), "planet-0002-b+3.conf");
        // Every try boots the new entry until its tries are spent.
        for done in 1..=DEFAULT_TRIES {
            assert_eq!(default_entry(&[old.clone(), new.clone()]), Some(&new));
            new = new.after_try();
            assert_eq!(new.tries, Some(Tries { left: DEFAULT_TRIES - done, done }));
            assert!(new.on_trial() == (done < DEFAULT_TRIES));
        }
        assert_eq!(new.file_name(), "planet-0002-b+0-3.conf");
        assert!(new.is_bad());
        assert_eq!(new.after_try(), new, "a bad entry is not counted further");
        // Bad: the old slot is booted again.
        assert_eq!(default_entry(&[new.clone(), old.clone()]), Some(&old));
    }

    #[test]
    fn blessing_removes_the_counter_and_keeps_the_new_slot_first() {
        let old = EntryName::new(1, 'a');
        let tried = EntryName::counted(2, 'b', 3).after_try();
        assert!(tried.on_trial());
        let blessed = tried.blessed();
        assert_eq!(blessed.file_name(), "planet-0002-b.conf");
        assert!(!blessed.on_trial() && !blessed.is_bad());
        assert_eq!(default_entry(&[old.clone(), blessed.clone()]), Some(&blessed));
        // The next update goes to slot a with a higher generation and wins while on trial.
        let next = EntryName::counted(3, 'a', 3);
        assert_eq!(default_entry(&[blessed.clone(), next.clone()]), Some(&next));
        // Generations compare as numbers, not text.
        assert_eq!(default_entry(&[EntryName::new(9, 'a'), EntryName::new(10, 'b')]).unwrap().generation, 10);
    }

    #[test]
    fn entry_text_and_options() {
        let t = entry_conf("Planet 2 (slot b)", "2", 'b', "console=ttyS0 planet.slot=b");
        assert_eq!(entry_field(&t, "version"), Some("2"));
        assert_eq!(entry_field(&t, "linux"), Some("/planet-b/vmlinuz"));
        assert_eq!(entry_field(&t, "options"), Some("console=ttyS0 planet.slot=b"));
        assert_eq!(
            options_for_slot("console=ttyS0 planet.slot=a planet.role=dev", 'b'),
            "console=ttyS0 planet.slot=b planet.role=dev"
        );
        assert_eq!(options_for_slot("console=ttyS0", 'a'), "console=ttyS0 planet.slot=a");
    }

    #[test]
    fn all_bad_still_names_an_entry() {
        let a = EntryName { generation: 1, slot: 'a', tries: Some(Tries { left: 0, done: 3 }) };
        let b = EntryName { generation: 2, slot: 'b', tries: Some(Tries { left: 0, done: 3 }) };
        assert_eq!(default_entry(&[a, b.clone()]), Some(&b));
        assert_eq!(default_entry(&[]), None);
    }
}
