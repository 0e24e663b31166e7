//! Turns a layout and the sizes of the built pieces into sector offsets and GUIDs. Pure: the
//! same inputs give the same plan, which is what makes images reproducible.

use crate::layout::Layout;
use anyhow::{bail, Result};
use planet_config::contract::{ESP_LABEL, SLOT_A_LABEL, SLOT_B_LABEL, STATE_LABEL};
use planet_gpt::{Gpt, Guid, Partition};
use sha2::{Digest, Sha256};

/// The BIOS boot partition holding GRUB's core.img (only with legacy BIOS boot).
pub const BIOS_LABEL: &str = "bios-boot";

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    pub label: &'static str,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    pub sectors: u64,
}

impl PartitionPlan {
    pub fn offset(&self, sector_size: u64) -> u64 {
        self.first_lba * sector_size
    }
    pub fn size(&self, sector_size: u64) -> u64 {
        self.sectors * sector_size
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub sector_size: u64,
    pub disk_guid: Guid,
    pub total_sectors: u64,
    pub partitions: Vec<PartitionPlan>,
    /// The digest of every input, which all derived identifiers come from.
    pub input_digest: String,
}

/// An identifier derived from the build's inputs, so two builds of the same inputs agree.
pub fn derive_bytes(input_digest: &str, purpose: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"planet-image\0");
    h.update(purpose.as_bytes());
    h.update(b"\0");
    h.update(input_digest.as_bytes());
    h.finalize().into()
}

pub fn derive_guid(input_digest: &str, purpose: &str) -> Guid {
    let b = derive_bytes(input_digest, purpose);
    Guid::from_random_bytes(b[..16].try_into().expect("16 bytes"))
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Sizes in bytes of the ESP and of each slot, before alignment.
pub fn esp_size(layout: &Layout, esp_content: u64) -> u64 {
    let align = layout.align_mib * MIB;
    match layout.esp.size_mib {
        Some(mib) => mib * MIB,
        // Room for a second slot's kernel and initramfs during an update, plus 25 %.
        None => round_up((esp_content * 2 * 5 / 4).max(crate::esp::min_size(layout.sector_size as u16)), align),
    }
}

/// Lays the partitions out; the disk's size is rounded up to `disk_multiple` bytes (GCE wants
/// whole GiB), the backup GPT always at its very end.
pub fn plan(
    layout: &Layout,
    esp_content: u64,
    slot_image: u64,
    input_digest: &str,
    disk_multiple: u64,
) -> Result<Plan> {
    let ss = layout.sector_size;
    let align = layout.align_mib * MIB;
    let esp = esp_size(layout, esp_content);
    if esp < esp_content {
        bail!("esp.size_mib = {} is too small for the boot files ({} bytes)", esp / MIB, esp_content);
    }
    let slot = match layout.slots.size_mib {
        Some(mib) => {
            if mib * MIB < slot_image {
                bail!(
                    "slots.size_mib = {mib} is too small for the rootfs's squashfs ({} MiB); raise it or leave it unset",
                    slot_image.div_ceil(MIB)
                );
            }
            mib * MIB
        }
        None => {
            round_up((slot_image * (100 + layout.slots.headroom_percent) / 100).max(layout.slots.min_mib * MIB), align)
        }
    };
    let state = round_up(layout.state.size_mib * MIB, align);

    let slot_type = planet_gpt::types::parse(&layout.slots.type_guid).expect("validated layout");
    let state_type = planet_gpt::types::parse(&layout.state.type_guid).expect("validated layout");
    let esp_type = planet_gpt::types::parse("esp").expect("constant");
    let mut specs: Vec<(&'static str, Guid, u64)> = vec![(ESP_LABEL, esp_type, esp)];
    if layout.bios.enabled {
        // Right after the ESP: the ESP keeps its place and number, planet-state stays last.
        let bios_type = planet_gpt::types::parse("bios-boot").expect("constant");
        specs.push((BIOS_LABEL, bios_type, round_up(layout.bios.size_mib * MIB, align)));
    }
    specs.extend([(SLOT_A_LABEL, slot_type, slot), (SLOT_B_LABEL, slot_type, slot), (STATE_LABEL, state_type, state)]);
    let mut offset = align;
    let mut partitions = Vec::new();
    for (label, type_guid, size) in specs {
        partitions.push(PartitionPlan {
            label,
            type_guid,
            unique_guid: derive_guid(input_digest, &format!("partition:{label}")),
            first_lba: offset / ss,
            sectors: size / ss,
        });
        offset += size;
    }
    // Leave an aligned tail for the backup GPT.
    let total = round_up(offset + align, disk_multiple.max(align));
    Ok(Plan {
        sector_size: ss,
        disk_guid: derive_guid(input_digest, "disk"),
        total_sectors: total / ss,
        partitions,
        input_digest: input_digest.to_string(),
    })
}

impl Plan {
    pub fn total_bytes(&self) -> u64 {
        self.total_sectors * self.sector_size
    }

    /// The partition of that label, if the plan has one (the BIOS boot partition is optional).
    pub fn find(&self, label: &str) -> Option<&PartitionPlan> {
        self.partitions.iter().find(|p| p.label == label)
    }

    pub fn partition(&self, label: &str) -> &PartitionPlan {
        self.partitions.iter().find(|p| p.label == label).expect("fixed partition set")
    }

    pub fn gpt(&self) -> Result<Gpt> {
        let mut g = Gpt::new(self.disk_guid, self.sector_size, self.total_sectors)?;
        for p in &self.partitions {
            g.partitions.push(Partition {
                type_guid: p.type_guid,
                unique_guid: p.unique_guid,
                first_lba: p.first_lba,
                last_lba: p.first_lba + p.sectors - 1,
                attributes: 0,
                name: p.label.to_string(),
            });
        }
        g.validate()?;
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_aligned_contiguous_and_derived_from_the_inputs() {
        let layout = Layout::load(None).unwrap();
        let p = plan(&layout, 30 * MIB, 100 * MIB, "inputs", 1).unwrap();
        assert_eq!(p.partitions.len(), 4);
        for w in p.partitions.windows(2) {
            assert_eq!(w[0].first_lba + w[0].sectors, w[1].first_lba);
        }
        for part in &p.partitions {
            assert_eq!(part.offset(512) % MIB, 0);
        }
        assert_eq!(p.partition(SLOT_A_LABEL).sectors, p.partition(SLOT_B_LABEL).sectors);
        assert!(p.partition(SLOT_A_LABEL).size(512) >= 150 * MIB);
        assert_eq!(p, plan(&layout, 30 * MIB, 100 * MIB, "inputs", 1).unwrap());
        assert_ne!(p.disk_guid, plan(&layout, 30 * MIB, 100 * MIB, "other", 1).unwrap().disk_guid);
        p.gpt().unwrap();
        let gib = plan(&layout, 30 * MIB, 100 * MIB, "inputs", 1 << 30).unwrap();
        assert_eq!(gib.total_bytes() % (1 << 30), 0);
        assert_eq!(gib.partitions, p.partitions);
    }

    #[test]
    fn bios_boot_partition_follows_the_esp_and_state_stays_last() {
        let mut layout = Layout::load(None).unwrap();
        let uefi = plan(&layout, 30 * MIB, 100 * MIB, "inputs", 1).unwrap();
        layout.bios.enabled = true;
        let p = plan(&layout, 30 * MIB, 100 * MIB, "inputs", 1).unwrap();
        let labels: Vec<_> = p.partitions.iter().map(|p| p.label).collect();
        assert_eq!(labels, [ESP_LABEL, BIOS_LABEL, SLOT_A_LABEL, SLOT_B_LABEL, STATE_LABEL]);
        assert_eq!(p.partition(ESP_LABEL), uefi.partition(ESP_LABEL));
        let bios = p.partition(BIOS_LABEL);
        assert_eq!(bios.size(512), MIB);
        assert_eq!(bios.type_guid.to_string(), planet_gpt::types::BIOS_BOOT);
        assert_eq!(p.total_sectors, uefi.total_sectors + MIB / 512);
        for w in p.partitions.windows(2) {
            assert_eq!(w[0].first_lba + w[0].sectors, w[1].first_lba);
        }
        p.gpt().unwrap();
        assert!(uefi.find(BIOS_LABEL).is_none());
    }

    #[test]
    fn fixed_slot_too_small_is_a_clear_error() {
        let mut layout = Layout::load(None).unwrap();
        layout.slots.size_mib = Some(10);
        let err = plan(&layout, MIB, 100 * MIB, "s", 1).unwrap_err();
        assert!(err.to_string().contains("slots.size_mib"));
    }
}
