//! planet-image: builds bootable A/B disk images that run a Planet rootfs.
//!
//! One module per pipeline stage: `rootfs` (inputs) → `squashfs` (slot) → `kernel` +
//! `initramfs` (the host) → `esp` (boot loader) → `disk` (GPT, sparse raw), planned by
//! `disk::plan` and run by `pipeline`; `fetch`, `inspect` (through `image_reader`) and `vm`
//! (`planet-image run`) around it, and `bundle` for signed update bundles made of the same stages.

pub mod app;
pub mod bios;
pub mod bundle;
pub mod cli;
pub mod cli_docs;
pub mod convert;
pub mod deb;
pub mod disk;
pub mod enter;
pub mod esp;
pub mod fat32;
pub mod fetch;
pub mod host;
pub mod image_reader;
pub mod initramfs;
pub mod inspect;
pub mod join_token;
pub mod kernel;
pub mod layout;
pub mod manifest;
pub mod pipeline;
pub mod publish;
pub mod pull;
pub mod rootfs;
pub mod seed;
pub mod squashfs;
pub mod util;
pub mod vm;
