//! Image layouts are data (`image-layouts/*.toml`): partition sizes and types, the kernel
//! modules the host carries, and the boot command line. The partition set itself (ESP, two
//! slots, state) is the product's contract with planet-init and is fixed.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The built-in layouts (profiles), compiled in so the binary works from anywhere.
pub const DEFAULT_LAYOUT: &str = include_str!("../image-layouts/default.toml");
pub const METAL_LAYOUT: &str = include_str!("../image-layouts/metal.toml");

/// A built-in layout by profile name.
pub fn builtin(profile: &str) -> Result<&'static str> {
    match profile {
        "default" | "cloud" => Ok(DEFAULT_LAYOUT),
        "metal" => Ok(METAL_LAYOUT),
        other => bail!("unknown profile {other:?}: use default or metal, or pass --layout FILE.toml"),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub name: String,
    /// Logical sector size the image is laid out for (512 or 4096).
    #[serde(default = "default_sector")]
    pub sector_size: u64,
    /// Partition alignment in MiB.
    #[serde(default = "default_align")]
    pub align_mib: u64,
    pub esp: EspSpec,
    pub slots: SlotSpec,
    pub state: StateSpec,
    pub kernel: KernelSpec,
    pub boot: BootSpec,
    /// Legacy BIOS boot (GRUB i386-pc in a BIOS boot partition); off unless enabled here or by
    /// `build --bios`. Left out of the serialized layout when off, so UEFI-only images are
    /// unchanged by its existence.
    #[serde(default, skip_serializing_if = "BiosSpec::is_off")]
    pub bios: BiosSpec,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BiosSpec {
    /// Install the BIOS boot path (`build --bios` sets it).
    #[serde(default)]
    pub enabled: bool,
    /// Size of the BIOS boot partition that holds GRUB's core.img.
    #[serde(default = "default_bios_size")]
    pub size_mib: u64,
}

impl Default for BiosSpec {
    fn default() -> BiosSpec {
        BiosSpec { enabled: false, size_mib: default_bios_size() }
    }
}

impl BiosSpec {
    fn is_off(&self) -> bool {
        !self.enabled
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EspSpec {
    /// Fixed size; when absent, twice the boot files plus headroom, at least FAT32's minimum.
    pub size_mib: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlotSpec {
    /// Fixed size of each slot; when absent, computed from the squashfs with headroom.
    pub size_mib: Option<u64>,
    /// Extra room for later, larger releases, in percent of the first one.
    #[serde(default = "default_headroom")]
    pub headroom_percent: u64,
    #[serde(default)]
    pub min_mib: u64,
    /// Partition type: a short name (`root-x86-64`, `linux`) or a GUID.
    #[serde(default = "default_slot_type")]
    pub type_guid: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// Size in the image; planet-init grows it to the end of the disk at first boot.
    pub size_mib: u64,
    #[serde(default = "default_state_type")]
    pub type_guid: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    /// Debian package giving the kernel (the meta package; its versioned dependency is fetched).
    pub package: String,
    /// Module classes: path prefixes below `/lib/modules/<version>/`; dependencies follow.
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    /// Kernel command line before `planet.slot=` and the user's `--cmdline`.
    pub cmdline: String,
}

fn default_sector() -> u64 {
    512
}
fn default_align() -> u64 {
    1
}
fn default_bios_size() -> u64 {
    1
}
fn default_headroom() -> u64 {
    50
}
fn default_slot_type() -> String {
    "root-x86-64".into()
}
fn default_state_type() -> String {
    "linux".into()
}

impl Layout {
    pub fn load(path: Option<&Path>) -> Result<Layout> {
        Layout::load_profile(path, "default")
    }

    /// `path` when given, else the built-in layout of `profile`.
    pub fn load_profile(path: Option<&Path>, profile: &str) -> Result<Layout> {
        let (text, origin) = match path {
            Some(p) => (
                std::fs::read_to_string(p).with_context(|| format!("reading the layout {}", p.display()))?,
                p.display().to_string(),
            ),
            None => (builtin(profile)?.to_string(), format!("the built-in {profile} layout")),
        };
        let layout: Layout = toml::from_str(&text).with_context(|| format!("parsing {origin}"))?;
        layout.validate().with_context(|| format!("checking {origin}"))?;
        Ok(layout)
    }

    pub fn validate(&self) -> Result<()> {
        if self.sector_size != 512 && self.sector_size != 4096 {
            bail!("sector_size must be 512 or 4096, not {}", self.sector_size);
        }
        if self.align_mib == 0 {
            bail!("align_mib must be at least 1");
        }
        for (what, t) in [("slots.type_guid", &self.slots.type_guid), ("state.type_guid", &self.state.type_guid)] {
            if planet_gpt::types::parse(t).is_none() {
                bail!("{what} = {t:?} is neither a known type name (root-x86-64, linux, esp) nor a GUID");
            }
        }
        if self.state.size_mib < 16 {
            bail!("state.size_mib must be at least 16 (ext4 with a journal)");
        }
        if self.bios.enabled {
            if self.sector_size != 512 {
                bail!(
                    "legacy BIOS boot (bios.enabled, --bios) needs 512-byte sectors: BIOSes do not boot 4Kn disks; \
                     build the 4Kn image without --bios"
                );
            }
            if self.bios.size_mib == 0 {
                bail!("bios.size_mib must be at least 1 (GRUB's core.img lives there)");
            }
        }
        if self.kernel.modules.is_empty() {
            bail!("kernel.modules is empty: the host could not find its disk");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_parses() {
        let l = Layout::load(None).unwrap();
        assert_eq!(l.sector_size, 512);
        assert!(l.kernel.modules.iter().any(|m| m.contains("squashfs")));
    }

    #[test]
    fn metal_profile_uses_the_generic_kernel_and_driver_classes() {
        let l = Layout::load_profile(None, "metal").unwrap();
        assert_eq!(l.kernel.package, "linux-image-amd64");
        assert!(l.kernel.modules.iter().any(|m| m == "kernel/drivers/scsi/"));
        assert!(Layout::load_profile(None, "nope").is_err());
    }

    #[test]
    fn bios_is_off_by_default_and_left_out_when_off() {
        let mut l = Layout::load(None).unwrap();
        assert!(!l.bios.enabled);
        assert_eq!(l.bios.size_mib, 1);
        assert!(!toml::to_string(&l).unwrap().contains("bios"));
        l.bios.enabled = true;
        assert!(toml::to_string(&l).unwrap().contains("[bios]"));
        l.sector_size = 4096;
        assert!(l.validate().unwrap_err().to_string().contains("512-byte"));
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = DEFAULT_LAYOUT.replace("[state]", "[state]\nsize_gib = 3");
        let err = toml::from_str::<Layout>(&text).unwrap_err();
        assert!(err.to_string().contains("size_gib"), "{err}");
    }
}
