//! The boot contract: the names the builder writes into a disk image and planet-init looks for
//! on the disk it booted from — GPT partition labels and where things live on the ESP. Written
//! once here, so the image and the host that reads it cannot drift apart.
//!
//! The ESP paths are relative to the ESP's root; Boot Loader Specification entries name them
//! with a leading `/` (see [`crate::bootentry::entry_conf`]).

/// The GPT label of the EFI system partition.
pub const ESP_LABEL: &str = "esp";
/// The GPT label of slot `a`'s partition (see [`slot_label`]).
pub const SLOT_A_LABEL: &str = "planet-a";
/// The GPT label of slot `b`'s partition.
pub const SLOT_B_LABEL: &str = "planet-b";
/// The GPT label of the partition that survives updates (and grows to fill the disk).
pub const STATE_LABEL: &str = "planet-state";

/// The GPT label of `slot`'s partition. Slots are `a` and `b`: planet-init refuses any other
/// `planet.slot=`.
pub fn slot_label(slot: char) -> String {
    format!("planet-{slot}")
}

/// systemd-boot as the removable-media boot path, which firmware finds without a boot variable.
pub const REMOVABLE_BOOT_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// systemd-boot's settings.
pub const LOADER_CONF_PATH: &str = "loader/loader.conf";
/// Where the Boot Loader Specification entries live (see [`crate::bootentry`]).
pub const LOADER_ENTRIES_DIR: &str = "loader/entries";
/// The kernel's file name in a slot's ESP directory.
pub const KERNEL_FILE: &str = "vmlinuz";
/// The initramfs's file name in a slot's ESP directory.
pub const INITRAMFS_FILE: &str = "initramfs.img";

/// The ESP directory holding `slot`'s kernel and initramfs.
pub fn esp_slot_dir(slot: char) -> String {
    format!("planet-{slot}")
}

/// `slot`'s kernel on the ESP.
pub fn kernel_path(slot: char) -> String {
    format!("{}/{KERNEL_FILE}", esp_slot_dir(slot))
}

/// `slot`'s initramfs on the ESP.
pub fn initramfs_path(slot: char) -> String {
    format!("{}/{INITRAMFS_FILE}", esp_slot_dir(slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_labels_agree_with_the_constants() {
        assert_eq!(slot_label('a'), SLOT_A_LABEL);
        assert_eq!(slot_label('b'), SLOT_B_LABEL);
    }

    #[test]
    fn esp_paths() {
        assert_eq!(kernel_path('b'), "planet-b/vmlinuz");
        assert_eq!(initramfs_path('a'), "planet-a/initramfs.img");
    }
}
